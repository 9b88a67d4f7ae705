"""Rows that share a prompt stay together: minibatches and micro-batches never cut a group."""

import torch

from lightning_rlhf.algorithm import Experience
from lightning_rlhf.modules.online import split_micro_batches


def experience(groups: list[int]) -> Experience:
    n = len(groups)
    lengths = torch.arange(n) % 3 + 2
    mask = (torch.arange(6) < lengths[:, None]).long()
    tensors = {"input_ids": torch.arange(n * 6).view(n, 6) * mask, "attention_mask": mask,
               "completion_mask": mask.clone(), "advantages": torch.randn(n, 5)}
    if groups is not None:
        tensors["group_index"] = torch.tensor(groups)
    return Experience(tensors)


def test_minibatches_hold_whole_groups_and_cover_every_row_once():
    groups = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4]  # G = 3, and a last group of 2
    exp = experience(groups)
    torch.manual_seed(0)
    minibatches = exp.minibatch_rows(4)
    rows = sorted(r for mb in minibatches for r in mb.tolist())
    assert rows == list(range(len(groups)))
    for mb in minibatches:
        members = [groups[r] for r in mb.tolist()]
        for g in set(members):
            assert members.count(g) == groups.count(g)  # the whole group
        assert len(mb) < 4 + 3  # past the target by less than a group
        batch = exp.minibatch(mb)
        for piece in split_micro_batches(batch, 2):
            for g in piece["group_index"].unique().tolist():
                assert (piece["group_index"] == g).sum() == groups.count(g)


def test_one_row_per_group_is_randperm_cut_into_pieces():
    """PPO's minibatches (a group per row) are what they were: randperm(N) in size-row pieces."""
    exp = experience(list(range(10)))
    torch.manual_seed(3)
    expected = torch.randperm(10).split(4)
    torch.manual_seed(3)
    assert [mb.tolist() for mb in exp.minibatch_rows(4)] == [e.tolist() for e in expected]
    del exp.tensors["group_index"]
    torch.manual_seed(3)
    assert [mb.tolist() for mb in exp.minibatch_rows(4)] == [e.tolist() for e in expected]


def test_micro_batches_without_groups_are_fixed_size_pieces():
    batch = experience(list(range(7))).minibatch(list(range(7)))
    del batch["group_index"]
    assert [piece["input_ids"].shape[0] for piece in split_micro_batches(batch, 3)] == [3, 3, 1]

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


def test_micro_batches_by_length_cover_every_row_once_with_less_padding():
    """``by_length``: rows sorted by length, cut into pieces of exactly ``size``, each trimmed
    to its own longest row; every row lands in one piece, the counts stay the minibatch's."""
    groups = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    batch = experience(groups).minibatch(list(range(len(groups))))
    batch["loss_rows"], batch["loss_tokens"] = torch.tensor(12.0), torch.tensor(40.0)
    plain = list(split_micro_batches(batch, 4))
    grouped = list(split_micro_batches(batch, 4, by_length=True))
    assert [p["input_ids"].shape[0] for p in grouped] == [4, 4, 4]
    def real_rows(piece):
        return [tuple(row[: int(length)]) for row, length in zip(piece["input_ids"].tolist(), piece["attention_mask"].sum(-1))]

    assert sorted(r for p in grouped for r in real_rows(p)) == sorted(real_rows(batch))
    padded = lambda pieces: sum(p["input_ids"].numel() for p in pieces)  # noqa: E731
    assert padded(grouped) < padded(plain)
    assert all(p["loss_rows"] == 12 and p["loss_tokens"] == 40 for p in grouped)


def test_grpo_micro_batches_by_length_give_the_gradient_of_the_whole_minibatch(tiny_tokenizer, one_thread):
    """A GRPO minibatch of rows of unlike length: the gradient summed over length-grouped
    micro-batches equals one pass over the whole minibatch (rtol 1e-5)."""
    from lightning_rlhf import create_algorithm
    from lightning_rlhf.generation import encode_prompts
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.modules.online import OnlineSettings
    from lightning_rlhf.modules.online_policy import OnlinePolicyModule
    from lightning_rlhf.rewards import FunctionReward

    algorithm = create_algorithm("grpo", num_generations=4, max_new_tokens=12)
    assert algorithm.rows_apart_in_loss and not create_algorithm("online_dpo").rows_apart_in_loss
    module = OnlinePolicyModule(policy=ModelSettings(name_or_path="builtin:tiny-llama"), algorithm=algorithm,
                                reward=FunctionReward("lightning_rlhf.rewards.rules.letter_e_reward"),
                                online=OnlineSettings(engine="decode"))
    module.configure_model()
    module.policy.generation_config.eos_token_id = list(range(0, module.policy.config.vocab_size, 8))  # samples end early, at many lengths
    prompts = ["Say hi.", "A longer prompt than that one, to pad.", "Name a colour."]
    with torch.no_grad():
        experience = algorithm.rollout(module, {"prompts": prompts, "prompt_ids": encode_prompts(module.tokenizer, prompts),
                                                "columns": [{} for _ in prompts]})
    (minibatch,) = algorithm.minibatches(experience)
    assert minibatch["attention_mask"].sum(-1).unique().numel() > 3  # lengths differ

    def gradient(pieces):
        module.policy.zero_grad()
        for piece in pieces:
            algorithm.loss(module, piece).loss.backward()
        return torch.cat([p.grad.flatten() for p in module.policy.parameters() if p.grad is not None])

    whole = gradient([minibatch])
    torch.testing.assert_close(gradient(split_micro_batches(minibatch, 5, by_length=True)), whole, rtol=1e-5, atol=1e-7)

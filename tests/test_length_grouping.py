import random

from lightning_rlhf.data.length_grouping import example_length, group_by_length
from lightning_rlhf.data.sampler import ResumableDataLoader


def _lengths(n=203, seed=0):
    rng = random.Random(seed)
    return [rng.randint(10, 250) for _ in range(n)]


def _batches(order, size):
    return [order[i : i + size] for i in range(0, len(order), size)]


def test_group_by_length_is_a_permutation_of_sorted_megabatches():
    lengths = _lengths()
    order = list(range(len(lengths)))
    random.Random(1).shuffle(order)
    grouped = group_by_length(order, lengths, batch_size=4, seed=7, megabatch_batches=5)
    assert sorted(grouped) == sorted(order)
    batches = _batches(grouped, 4)
    assert all(len(b) == 4 for b in batches[:-1]) and len(batches[-1]) == 203 % 4  # short batch last
    # every full batch is a run of its megabatch sorted longest first
    megabatches = [order[i : i + 20] for i in range(0, len(order), 20)]
    runs = {tuple(b) for m in megabatches for b in _batches(sorted(m, key=lambda i: -lengths[i]), 4)}
    assert all(tuple(b) in runs for b in batches)
    assert grouped == group_by_length(order, lengths, 4, seed=7, megabatch_batches=5)  # deterministic
    assert grouped != group_by_length(order, lengths, 4, seed=8, megabatch_batches=5)


def test_group_by_length_cuts_padding():
    lengths = _lengths(800)
    order = list(range(len(lengths)))
    random.Random(2).shuffle(order)

    def padded(o):
        return sum(len(b) * max(lengths[i] for i in b) for b in _batches(o, 8))

    real = sum(lengths)
    # random batches of 8 with lengths uniform in [10, 250]: about a third padding
    assert padded(order) / real > 1.3
    assert padded(group_by_length(order, lengths, 8, seed=0)) / real < 1.05


def test_example_length_takes_the_longest_completion():
    assert example_length({"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5, 6], "margin": 1.0}) == 5
    assert example_length({"prompt_ids": [1], "completion_ids": [[2], [3, 4, 5, 6]], "ranks": [1, 2]}) == 5
    assert example_length({"prompt_ids": [1, 2, 3]}) == 3


def test_length_grouped_loader_resumes_mid_epoch():
    lengths = _lengths(50)
    rows = list(range(50))

    def loader():
        return ResumableDataLoader(rows, batch_size=4, seed=3, lengths=lengths, collate_fn=list)

    first = loader()
    first.sampler.set_epoch(1)
    epoch = list(first)
    assert sorted(i for b in epoch for i in b) == rows
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epoch[:-1]]
    assert max(spread) < 40  # similar lengths in each batch (uniform over 10..250 otherwise)

    partial = loader()
    partial.sampler.set_epoch(1)
    iterator = iter(partial)
    done = [next(iterator) for _ in range(5)]
    state = partial.state_dict()
    assert done == epoch[:5] and state == {"seed": 3, "epoch": 1, "batches": 5}

    resumed = loader()
    resumed.load_state_dict(state)
    assert list(resumed) == epoch[5:]


def test_data_module_switch(tmp_path, tiny_tokenizer):
    import json

    from lightning_rlhf.data import PreferenceDataModule

    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "p" * (i % 7 + 1), "chosen": " yes" * (i % 5 + 1), "rejected": " no"} for i in range(24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for switch in (False, True):
        data = PreferenceDataModule(path=str(path), batch_size=4, group_by_length=switch, val_fraction=0.25)
        data.tokenizer = tiny_tokenizer
        data.setup("fit")
        sampler = data.train_dataloader().sampler
        assert (sampler.lengths is not None) == switch
        val_widths = [b["input_ids"].shape[1] for b in data.val_dataloader()]
        if switch:
            assert val_widths == sorted(val_widths)


def test_padding_share_by_hand():
    from lightning_rlhf.data.length_grouping import padding_share

    assert padding_share([4, 4, 4], batch_size=2) == 0.0
    assert padding_share([1, 3], batch_size=2) == 1 - 4 / 6  # one batch, padded to 3: [3, 3]
    assert padding_share([5], batch_size=4) == 0.0


def test_setup_hints_at_group_by_length_when_batches_are_mostly_padding(tmp_path, tiny_tokenizer, caplog):
    import json
    import logging

    from lightning_rlhf.data import SFTDataModule

    path = tmp_path / "sft.jsonl"
    # completions of 1 to 200 bytes: random batches of 8 are about half padding
    rows = [{"prompt": "p", "completion": "x" * (1 + (i * 37) % 200)} for i in range(64)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for switch, hinted in ((False, True), (True, False)):
        caplog.clear()
        data = SFTDataModule(path=str(path), batch_size=8, group_by_length=switch, max_length=256)
        data.tokenizer = tiny_tokenizer
        with caplog.at_level(logging.WARNING, logger="lightning_rlhf.data.modules"):
            data.setup("fit")
        assert ("group_by_length: true" in caplog.text) == hinted, caplog.text
    even = tmp_path / "even.jsonl"
    even.write_text("".join(json.dumps({"prompt": "p", "completion": "x" * 50}) + "\n" for _ in range(16)))
    caplog.clear()
    data = SFTDataModule(path=str(even), batch_size=8, max_length=256)
    data.tokenizer = tiny_tokenizer
    with caplog.at_level(logging.WARNING, logger="lightning_rlhf.data.modules"):
        data.setup("fit")
    assert "padding" not in caplog.text

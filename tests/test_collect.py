"""Preference collection: pairs and rankings from scored samples, read back by the data modules."""

import json

import pytest

from lightning_rlhf.collect import preference_rows
from lightning_rlhf.data.readers import write_jsonl
from lightning_rlhf.commands.label import label_command
from lightning_rlhf.data import PreferenceDataModule, RankingDataModule

PROMPTS = ["The film was", "The soup was", "The trip was"]
COMPLETIONS = [[" great.", " awful.", " fine."], [" ok.", " ok!", " ok?"], [" nice.", " bad.", " good."]]
SCORES = [[0.6, -0.5, 0.2], [0.0, 0.0, 0.0], [0.4, -0.3, 0.45]]


def count_vowels(prompts, completions):
    """A rule-based reward for the end-to-end test: the tiny model writes random bytes."""
    return [float(sum(ch in "aeiou" for ch in c)) for c in completions]


def test_best_worst_pairs_with_margins_and_ties_skipped():
    rows, summary = preference_rows(PROMPTS, COMPLETIONS, SCORES, "best-worst")
    assert rows == [
        {"prompt": "The film was", "chosen": " great.", "rejected": " awful.", "margin": pytest.approx(1.1)},
        {"prompt": "The trip was", "chosen": " good.", "rejected": " bad.", "margin": pytest.approx(0.75)},
    ]
    assert (summary.prompts, summary.rows, summary.skipped_ties) == (3, 2, 1)


def test_all_pairs_above_a_gap():
    rows, summary = preference_rows(PROMPTS, COMPLETIONS, SCORES, "all-pairs", min_gap=0.3)
    # film: gaps 1.1, 0.4, 0.7 all > 0.3; trip: 0.7 (nice/bad), 0.75 (good/bad); 0.05 is not.
    pairs = [(r["chosen"], r["rejected"]) for r in rows]
    assert pairs == [(" great.", " awful."), (" great.", " fine."), (" fine.", " awful."),
                     (" nice.", " bad."), (" good.", " bad.")]
    assert summary.skipped_ties == 1 and summary.skipped_small_gap == 0


def test_small_gap_counted_apart_from_ties():
    _, summary = preference_rows(PROMPTS, COMPLETIONS, SCORES, "best-worst", min_gap=1.0)
    assert (summary.rows, summary.skipped_ties, summary.skipped_small_gap) == (1, 1, 1)


def test_pairs_round_trip_through_the_preference_data_module(tmp_path, tiny_tokenizer):
    rows, _ = preference_rows(PROMPTS, COMPLETIONS, SCORES, "all-pairs")
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    module = PreferenceDataModule(path=str(path), max_length=64)
    module.tokenizer = tiny_tokenizer
    module.setup("fit")
    assert len(module.train_rows) == len(rows) == 6
    batch = next(iter(module.train_dataloader()))
    assert batch["input_ids"].shape[0] == 2 * min(8, len(rows))


def test_rankings_round_trip_through_the_ranking_data_module(tmp_path, tiny_tokenizer):
    rows, summary = preference_rows(PROMPTS, COMPLETIONS, SCORES, "ranking")
    assert rows[1] == {"prompt": "The trip was", "completions": [" nice.", " bad.", " good."], "scores": [0.4, -0.3, 0.45]}
    path = write_jsonl(tmp_path / "ranked.jsonl", rows)
    module = RankingDataModule(path=str(path), max_length=64)
    module.tokenizer = tiny_tokenizer
    module.setup("fit")
    assert [row["ranks"] for row in module.train_rows] == [[0, 1, 2], [0, 1, 2]]


def test_label_command_end_to_end(tmp_path, tiny_tokenizer, capsys, monkeypatch):
    import sys

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": p} for p in PROMPTS])
    out = tmp_path / "pairs.jsonl"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # progress bars draw on a terminal
    # tests/ is on sys.path under pytest, so this module's reward function imports by name.
    assert label_command(["--policy", "builtin:tiny-llama", "--prompts", str(prompts), "--k", "3",
                          "--reward", "test_collect.count_vowels", "--output", str(out),
                          "--max-new-tokens", "6"]) == 0
    captured = capsys.readouterr()
    assert "label: 3 samples x 3 prompts" in captured.err  # a progress bar while it samples
    summary = json.loads(captured.out.strip().splitlines()[-1])
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["prompts"] == 3 and summary["rows"] == len(written)
    assert summary["rows"] + summary["skipped_ties"] + summary["skipped_small_gap"] == 3
    for row in written:
        assert count_vowels(None, [row["chosen"]])[0] - count_vowels(None, [row["rejected"]])[0] == row["margin"] > 0


def test_progress_is_quiet_when_the_output_is_not_a_terminal(capsys):
    from lightning_rlhf.commands.core import load_policy
    from lightning_rlhf.generation import sample

    model, tokenizer = load_policy("builtin:tiny-llama")
    capsys.readouterr()
    sample(model, tokenizer, ["a"], n=2, max_new_tokens=2, progress="sampling for a log file")
    assert "sampling for a log file" not in capsys.readouterr().err


def test_prompt_file_errors_name_the_row(tmp_path):
    from lightning_rlhf.data import DataError

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(DataError, match="row 2"):
        label_command(["--policy", "builtin:tiny-llama", "--prompts", str(path), "--reward", "gold", "--output", str(tmp_path / "o.jsonl")])


def test_label_and_evaluate_need_a_reward(tmp_path, capsys):
    """No default: `gold` scores the toy world's sentiment, which says nothing of a real model."""
    from lightning_rlhf.cli import main

    for command, message in ((["label", "--output", "o.jsonl"], "one of the arguments --reward --judge is required"),
                             (["evaluate", "--reference", "builtin:tiny-llama"], "the following arguments are required: --reward")):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--policy", "builtin:tiny-llama", "--prompts", "p.jsonl"])
        assert exit_.value.code == 2 and message in capsys.readouterr().err

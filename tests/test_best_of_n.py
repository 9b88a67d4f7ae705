"""Best-of-n: the KL formula, the choice and its statistics by hand, and `evaluate --best-of-n`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lightning_rlhf.best_of_n import best_of_n_choice, best_of_n_kl, best_of_n_rows, parse_ns
from lightning_rlhf.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_best_of_n_kl_is_log_n_minus_n_minus_1_over_n():
    # n = 1: the reference itself; n = 2: log 2 - 1/2; n = 4: log 4 - 3/4; n = 16: log 16 - 15/16
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(0.693147 - 0.5, abs=1e-6)
    assert best_of_n_kl(4) == pytest.approx(1.386294 - 0.75, abs=1e-6)
    assert best_of_n_kl(16) == pytest.approx(2.772589 - 0.9375, abs=1e-6)
    with pytest.raises(ValueError):
        best_of_n_kl(0)


def test_best_of_n_picks_by_the_selection_reward_and_reports_the_evaluation_reward():
    selection = torch.tensor([[0.1, 0.9, 0.5, 0.95], [0.3, 0.2, 0.2, 0.1], [0.5, 0.5, 0.0, 0.0]])
    gold = torch.tensor([[1.0, -1.0, 0.2, 0.4], [0.0, 0.5, 0.6, 0.9], [0.3, -0.3, 0.0, 0.0]])
    reference = torch.tensor([[0.0], [0.0], [0.3]])  # one reference sample per prompt
    assert best_of_n_choice(selection, 2).tolist() == [1, 0, 0]  # a tie (prompt 3) goes to the first sample
    rows = {r["n"]: r for r in best_of_n_rows(selection, gold, reference, [1, 2, 4])}
    # n = 1: picks [0, 0, 0] -> gold [1, 0, 0.3]; vs reference: win, tie, tie -> (1 + 0.5 + 0.5) / 3
    assert rows[1]["mean_reward"] == pytest.approx(1.3 / 3) and rows[1]["win_rate"] == pytest.approx(2 / 3)
    # n = 2: picks [1, 0, 0] -> gold [-1, 0, 0.3]: loss, tie, tie -> 1/3; the proxy's pick can be gold's worst
    assert rows[2]["mean_reward"] == pytest.approx(-0.7 / 3) and rows[2]["win_rate"] == pytest.approx(1 / 3)
    # n = 4: picks [3, 0, 0] -> gold [0.4, 0, 0.3]: win, tie, tie -> 2/3; selection scores [0.95, 0.3, 0.5]
    assert rows[4]["mean_reward"] == pytest.approx(0.7 / 3) and rows[4]["win_rate"] == pytest.approx(2 / 3)
    assert rows[4]["mean_selection_reward"] == pytest.approx(1.75 / 3)
    assert rows[4]["kl"] == pytest.approx(math.log(4) - 0.75)
    with pytest.raises(ValueError):
        best_of_n_choice(selection, 5)  # only 4 samples were drawn


def test_parse_ns():
    assert parse_ns("4,2, 2,32") == [2, 4, 32]
    for bad in ("0,2", "two", ""):
        with pytest.raises(ValueError):
            parse_ns(bad)


def test_evaluate_reports_best_of_n_from_the_reference(tmp_path, capsys):
    output = tmp_path / "report.json"
    argv = ["evaluate", "--policy", "builtin:tiny-llama", "--reference", "builtin:tiny-llama",
            "--prompts", str(ROOT / "recipes" / "data" / "tiny_prompts.jsonl"), "--limit", "6",
            "--reward", "lightning_rlhf.rewards.rules.letter_e_reward", "--max-new-tokens", "12",
            "--best-of-n", "1,2,4,8", "--output", str(output)]
    assert main(argv) == 0
    report = json.loads(output.read_text())
    assert report["win_rate"] == 0.5 and report["kl"] == pytest.approx(0.0, abs=1e-6)  # the existing report is intact
    best = report["best_of_n"]
    assert best["samples_per_prompt"] == 8 and best["selection_reward"] == "lightning_rlhf.rewards.rules.letter_e_reward"
    rewards = [r["mean_reward"] for r in best["rows"]]
    # Selected and scored by the same reward over nested samples: the best of more is never worse.
    assert [r["n"] for r in best["rows"]] == [1, 2, 4, 8] and rewards == sorted(rewards) and rewards[-1] > rewards[0]
    assert [r["kl"] for r in best["rows"]] == [best_of_n_kl(n) for n in (1, 2, 4, 8)]
    assert "best of n reference samples, selected by lightning_rlhf.rewards.rules.letter_e_reward" in capsys.readouterr().out


def test_bad_best_of_n_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--policy", "x", "--reference", "y", "--prompts", "z", "--best-of-n", "0,2"])
    assert exit_info.value.code == 2
    assert "--best-of-n" in capsys.readouterr().err

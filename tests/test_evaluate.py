"""Evaluation arithmetic on hand-made samples, and a model against itself."""

from pathlib import Path

import pytest

from lightning_rlhf.evaluate import evaluate_models, format_report, sequence_kl, win_rate
from lightning_rlhf.rewards.base import FunctionReward


def test_win_rate_counts_ties_as_half():
    # win (0.9 > 0.1), loss (-0.5 < 0.2), tie (0.3 == 0.3), win (1.0 > -1.0): (1 + 0 + 0.5 + 1) / 4
    assert win_rate([0.9, -0.5, 0.3, 1.0], [0.1, 0.2, 0.3, -1.0]) == pytest.approx(0.625)
    assert win_rate([0.0], [0.0]) == 0.5


def test_sequence_kl_is_the_mean_log_ratio_of_sequences():
    # log pi - log pi_ref per sample: (-3 - -5) = 2, (-10 - -9) = -1, (-4 - -4) = 0 -> mean 1/3
    assert sequence_kl([-3.0, -10.0, -4.0], [-5.0, -9.0, -4.0]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("function", [win_rate, sequence_kl])
def test_mismatched_or_empty_inputs_are_errors(function):
    with pytest.raises(ValueError):
        function([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        function([], [])


def test_a_model_against_itself_ties_with_zero_kl(tiny_tokenizer):
    from lightning_rlhf.commands.core import load_policy

    model, tokenizer = load_policy("builtin:tiny-llama")
    reward = FunctionReward("lightning_rlhf.toyworld.gold.gold_reward")
    report = evaluate_models(model, tokenizer, model, tokenizer, ["hi", "ok then", "x"], reward,
                             samples=2, max_new_tokens=5, seed=3)
    # Same seed, same model: identical samples, so every pair ties and the log ratio is 0.
    assert report["win_rate"] == 0.5
    assert report["kl"] == pytest.approx(0.0, abs=1e-6)
    assert report["policy"] == report["reference"]
    assert report["policy"]["mean_length"] == 5.0
    assert "win rate vs reference" in format_report(report)


LETTER_E = "lightning_rlhf.rewards.rules.letter_e_reward"
LENGTH = "tests.test_evaluate.length_reward"


def length_reward(prompts, completions):
    return [float(len(c)) for c in completions]


def test_the_proxy_reward_is_reported_beside_the_evaluation_reward_with_a_figure_and_a_wandb_image(tmp_path, capsys, monkeypatch):
    """`evaluate --proxy-reward` scores both models' samples (and the best-of-n picks) with a
    second reward; the report is drawn beside its JSON and the figure logged to W&B."""
    import json

    from lightning_rlhf.commands.evaluate import evaluate_command
    from lightning_rlhf.tracking import read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Tell me a", "The weather", "Once upon", "hi"]))
    output = tmp_path / "report.json"
    memo: dict = {}
    argv = ["--policy", "builtin:tiny-llama", "--reference", "builtin:tiny-llama", "--prompts", str(prompts), "--reward", LETTER_E,
            "--proxy-reward", LENGTH, "--best-of-n", "1,2,4", "--best-of-n-reward", LENGTH, "--max-new-tokens", "6",
            "--output", str(output), "--wandb-project", "evaluate-check"]
    assert evaluate_command(argv, reference_memo=memo) == 0
    report = json.loads(output.read_text())
    # the same model and seed on both sides: equal proxy means; best-of-n picks the longest of n by the proxy
    assert report["policy"]["mean_proxy_reward"] == report["reference"]["mean_proxy_reward"]
    proxy = [row["mean_proxy_reward"] for row in report["best_of_n"]["rows"]]
    assert proxy == sorted(proxy) and proxy == [row["mean_selection_reward"] for row in report["best_of_n"]["rows"]]
    printed = capsys.readouterr().out
    assert "mean proxy reward" in printed
    assert output.with_suffix(".png").stat().st_size > 10_000
    run_log = Path(printed.split("W&B run: ", 1)[1].splitlines()[0])
    # beside the report, in a run of its own: after test_end_to_end's DPO fit (which leaves
    # its W&B run open in this process) the report used to land in that run
    assert run_log.is_relative_to(tmp_path)
    images = [row["eval/reward_vs_kl"] for row in read_offline_run(run_log).history if "eval/reward_vs_kl" in row]
    assert len(images) == 1 and images[0]["_type"] == "image-file"

    # a second evaluation against the same reference reuses its samples: nothing is drawn again
    assert len(memo) == 1
    import lightning_rlhf.evaluate as evaluate

    monkeypatch.setattr(evaluate, "sample_reference", lambda *a, **k: pytest.fail("the reference was sampled again"))
    again = tmp_path / "again.json"
    assert evaluate_command([*argv[:-4], "--output", str(again)], reference_memo=memo) == 0
    assert len(memo) == 1 and json.loads(again.read_text())["reference"] == report["reference"]

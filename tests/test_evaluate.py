"""Evaluation arithmetic on hand-made samples, and a model against itself."""

import pytest

from lightning_rlhf.evaluate import evaluate_models, format_report, sequence_kl, win_rate
from lightning_rlhf.rewards.base import FunctionReward


def test_win_rate_counts_ties_as_half():
    # win (0.9 > 0.1), loss (-0.5 < 0.2), tie (0.3 == 0.3), win (1.0 > -1.0): (1 + 0 + 0.5 + 1) / 4
    assert win_rate([0.9, -0.5, 0.3, 1.0], [0.1, 0.2, 0.3, -1.0]) == pytest.approx(0.625)
    assert win_rate([0.0], [0.0]) == 0.5


def test_kl_estimate_is_the_mean_log_ratio_of_sequences():
    # log pi - log pi_ref per sample: (-3 - -5) = 2, (-10 - -9) = -1, (-4 - -4) = 0 -> mean 1/3
    assert sequence_kl([-3.0, -10.0, -4.0], [-5.0, -9.0, -4.0]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("function", [win_rate, sequence_kl])
def test_mismatched_or_empty_inputs_are_errors(function):
    with pytest.raises(ValueError):
        function([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        function([], [])


def test_a_model_against_itself_ties_with_zero_kl(tiny_tokenizer):
    from lightning_rlhf.collect import load_policy

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

"""Several rewards combined: each scored concurrently, each logged on its own."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from lightning_rlhf.rewards import FunctionReward, WeightedSum

LETTER_E = "lightning_rlhf.rewards.rules.letter_e_reward"
ANSWER = "lightning_rlhf.rewards.rules.contains_answer"


def test_weighted_sum_keeps_each_part_by_name():
    total = WeightedSum([FunctionReward(LETTER_E), FunctionReward(ANSWER), FunctionReward(LETTER_E)], weights=[0.5, 2.0, 1.0])
    assert total.names == ["letter_e_reward_1", "contains_answer", "letter_e_reward_2"]
    scores = total(["p", "p"], ["eee 4", "no"], [{"answer": "4"}, {"answer": "4"}])
    # "eee 4": 3 letters e, contains 4 -> 0.5 * 3 + 2 * 1 + 3 = 6.5; "no": 0
    assert scores.tolist() == [6.5, 0.0]
    assert {k: v.tolist() for k, v in total.last_components.items()} == {
        "letter_e_reward_1": [3.0, 0.0], "contains_answer": [1.0, 0.0], "letter_e_reward_2": [3.0, 0.0]}
    assert WeightedSum([FunctionReward(LETTER_E)], names=["style"]).names == ["style"]
    with pytest.raises(ValueError, match="names"):
        WeightedSum([FunctionReward(LETTER_E)], names=["a", "b"])


async def slow_length(prompts, completions):
    await asyncio.sleep(0.3)
    return [float(len(c)) for c in completions]


async def slow_count_a(prompts, completions):
    await asyncio.sleep(0.3)
    return [float(c.count("a")) for c in completions]


def test_sources_score_concurrently():
    total = WeightedSum([FunctionReward(f"{__name__}.slow_length"), FunctionReward(f"{__name__}.slow_count_a")])
    started = time.perf_counter()
    assert total(["p"], ["banana"]).tolist() == [9.0]
    # one after the other would take 0.6 s at least
    assert time.perf_counter() - started < 0.55


def test_each_part_is_logged_as_a_training_metric(tmp_path):
    """One epoch of GRPO with two rewards: ``train/reward/<name>`` is each part's mean over
    the rollout's samples, beside the total the plugin logs."""
    import lightning as L

    from lightning_rlhf.registry import create_algorithm
    from lightning_rlhf.data import PromptDataModule
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.modules.online import OnlineSettings
    from lightning_rlhf.modules.policy import PolicyModule
    from tests.online_learning import write_prompts

    class Recording(WeightedSum):
        calls: list[dict[str, torch.Tensor]] = []

        def score(self, prompts, completions, columns=None):
            scores = super().score(prompts, completions, columns)
            self.calls.append(dict(self.last_components))
            return scores

    reward = Recording([FunctionReward(LETTER_E), FunctionReward(f"{__name__}.count_a")], weights=[1.0, 0.5])
    algorithm = create_algorithm("grpo", num_generations=2, max_new_tokens=6, beta=0.0)
    module = PolicyModule(ModelSettings(name_or_path="builtin:tiny-llama"), algorithm, reward=reward,
                          online=OnlineSettings(sample_table_every_n_steps=0))
    data = PromptDataModule(path=str(write_prompts(tmp_path, 4)), batch_size=4, max_length=32)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, data)
    (call,) = reward.calls
    metrics = trainer.callback_metrics
    for name, scores in call.items():
        torch.testing.assert_close(metrics[f"train/reward/{name}"], scores.mean())
    assert set(call) == {"letter_e_reward", "count_a"}


def count_a(prompts, completions):
    return [float(c.count("a")) for c in completions]


def test_a_monitored_reward_is_logged_but_never_trained_on(tmp_path):
    """``monitor: {name: spec}`` scores the rollout's samples beside the training reward:
    logged as ``train/monitor/<name>``, the mean over the same samples, and absent from the
    loss (the run trains exactly as without it)."""
    import lightning as L

    from lightning_rlhf.data import PromptDataModule
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.modules.online import OnlineSettings
    from lightning_rlhf.modules.online_policy import OnlinePolicyModule
    from lightning_rlhf.registry import create_algorithm
    from tests.online_learning import write_prompts

    def fit(monitor):
        L.seed_everything(0)
        module = OnlinePolicyModule(ModelSettings(name_or_path="builtin:tiny-llama"),
                                    create_algorithm("grpo", num_generations=2, max_new_tokens=6, beta=0.0),
                                    reward=FunctionReward(LETTER_E), online=OnlineSettings(sample_table_every_n_steps=0),
                                    monitor=monitor)
        data = PromptDataModule(path=str(write_prompts(tmp_path, 4)), batch_size=4, max_length=32)
        trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, data)
        return trainer.callback_metrics, module

    metrics, module = fit({"same": LETTER_E, "a": f"{__name__}.count_a"})
    # the same function as the training reward: its monitor equals the plugin's own mean reward
    torch.testing.assert_close(metrics["train/monitor/same"], metrics["train/objective/scores"])
    assert "train/monitor/a" in metrics and module.hparams["monitor"]["a"] == f"{__name__}.count_a"
    unmonitored, plain = fit(None)
    assert "train/monitor/same" not in unmonitored
    for (name, trained), untouched in zip(module.policy.named_parameters(), plain.policy.parameters()):
        torch.testing.assert_close(trained, untouched, msg=name)
    with pytest.raises(ValueError, match="not a metric name"):
        OnlinePolicyModule(ModelSettings(name_or_path="builtin:tiny-llama"), create_algorithm("grpo"), monitor={"a/b": LETTER_E})

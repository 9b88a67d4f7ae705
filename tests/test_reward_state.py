"""A reward source's own state (SafetyGatedReward's running whitening statistics) in a run:
saved in the run's checkpoints and restored on resume, and frozen while validation rollouts
are scored."""

from __future__ import annotations

import json
import signal

import lightning as L
import torch
import yaml

from lightning_rlhf import create_algorithm
from lightning_rlhf.data import PromptDataModule
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.modules.online import OnlineSettings
from lightning_rlhf.modules.online_policy import OnlinePolicyModule
from lightning_rlhf.rewards import FunctionReward, SafetyGatedReward
from tests.test_resume import fit_in_process, fit_in_subprocess, kill_at, write_recipe

LETTER_E = "lightning_rlhf.rewards.rules.letter_e_reward"
SAFETY_BY_LENGTH = "tests.test_reward_state.safety_by_length"  # importable in the killed run's process too


def safety_by_length(prompts: list[str], completions: list[str]) -> list[float]:
    """A logit-scale safety score that sends short completions (sigmoid < 0.15, under 3
    characters) to the safety model and lets long ones through to helpfulness."""
    return [len(c) / 4 - 2.5 for c in completions]


def moments(source: SafetyGatedReward) -> tuple[int, float, float]:
    return source.count, source.running_mean, source.running_m2


class RecordMoments(L.Callback):
    """The statistics as each validation pass finds them and leaves them."""

    def __init__(self) -> None:
        self.passes: list[tuple[tuple, tuple]] = []

    def on_validation_start(self, trainer, pl_module) -> None:
        self._start = moments(pl_module.reward_source)

    def on_validation_end(self, trainer, pl_module) -> None:
        self.passes.append((self._start, moments(pl_module.reward_source)))


def test_validation_rollouts_leave_the_running_statistics_unchanged(tmp_path, one_thread):
    """The sanity check (before any training batch) and the end-of-epoch validation score
    rollouts through the gated source; neither moves its moments, and training goes on
    updating them afterwards."""
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"Q{i}:"}) + "\n" for i in range(8)))
    val.write_text("".join(json.dumps({"prompt": f"V{i}:"}) + "\n" for i in range(4)))
    source = SafetyGatedReward(FunctionReward(LETTER_E), FunctionReward(SAFETY_BY_LENGTH))
    module = OnlinePolicyModule(ModelSettings("builtin:tiny-llama"), create_algorithm("rloo", num_generations=2, max_new_tokens=8),
                                reward=source, online=OnlineSettings(sample_table_every_n_steps=0))
    recorder = RecordMoments()
    L.seed_everything(0)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=1, callbacks=[recorder])
    trainer.fit(module, PromptDataModule(path=str(train), val_path=str(val), batch_size=4, max_length=32))

    assert len(recorder.passes) == 3  # the sanity check, then one pass per epoch
    for start, end in recorder.passes:
        assert end == start
    assert recorder.passes[0][0][0] == 0  # the sanity check ran before any training rollout
    assert recorder.passes[-1][0][0] == 2 * 2 * 8  # 2 epochs of 8 prompts x 2 samples, none from validation
    assert source.training and module.reward_source.count == 32


GATED_REWARD = {
    "class_path": "lightning_rlhf.rewards.SafetyGatedReward",
    "init_args": {
        "helpfulness": {"class_path": "lightning_rlhf.rewards.FunctionReward", "init_args": {"function": LETTER_E}},
        "safety": {"class_path": "lightning_rlhf.rewards.FunctionReward", "init_args": {"function": SAFETY_BY_LENGTH}},
    },
}


def gated_recipe(tmp_path, root: str, callbacks: list | None = None, name: str = "recipe"):
    """test_resume's rloo recipe (RLOO's advantages scale with the whitened rewards), scored
    by the gated source."""
    path = write_recipe(tmp_path, "rloo", root, callbacks, name=name)
    recipe = yaml.safe_load(path.read_text())
    recipe["model"]["init_args"]["reward"] = GATED_REWARD
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_killed_and_resumed_run_restores_the_running_statistics_exactly(tmp_path, one_thread):
    whole = fit_in_process("--config", str(gated_recipe(tmp_path, "whole", name="whole")))
    assert whole.trainer.global_step == 6

    killed = fit_in_subprocess(gated_recipe(tmp_path, "killed", [kill_at(5)], name="killed"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert checkpoint["reward_state"]["reward"]["count"] == 4 * 6 * 2  # 4 rollouts of 6 prompts x 2 samples

    resumed = fit_in_process("--config", str(gated_recipe(tmp_path, "killed", name="resume")), "--ckpt_path", str(last))
    assert resumed.trainer.global_step == 6
    assert moments(resumed.model.reward_source) == moments(whole.model.reward_source)
    assert resumed.model.reward_source.count == 6 * 6 * 2
    torch.testing.assert_close(resumed.trainer.callback_metrics["train/loss"], whole.trainer.callback_metrics["train/loss"],
                               rtol=0, atol=1e-6)
    expected = whole.model.policy.state_dict()
    for key, value in resumed.model.policy.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6, msg=key)


def test_every_source_the_module_scores_with_is_checkpointed_and_frozen(caplog):
    """A module that scores with a second stateful source (a monitored reward) lists it in
    ``reward_sources``; the hooks then save, restore and freeze both, each under its name."""
    def gated() -> SafetyGatedReward:
        return SafetyGatedReward(FunctionReward(LETTER_E), FunctionReward(SAFETY_BY_LENGTH))

    def module_with(reward: SafetyGatedReward, monitored: SafetyGatedReward) -> OnlinePolicyModule:
        module = OnlinePolicyModule(ModelSettings("builtin:tiny-llama"), create_algorithm("rloo"), reward=reward)
        module.reward_sources = lambda: {"reward": reward, "monitor/gated": monitored}
        return module

    prompts, completions = ["p"] * 3, ["a", "bee", "eeeeeeee"]
    reward, monitored = gated(), gated()
    reward(prompts, completions)
    monitored(prompts[:2], completions[:2])
    checkpoint = {"state_dict": {}}
    module_with(reward, monitored).on_save_checkpoint(checkpoint)
    assert {name: state["count"] for name, state in checkpoint["reward_state"].items()} == {"reward": 3, "monitor/gated": 2}

    restored = module_with(gated(), gated())
    restored.on_load_checkpoint(checkpoint)
    assert [moments(source) for source in restored.reward_sources().values()] == [moments(reward), moments(monitored)]

    restored.on_validation_start()
    for source in restored.reward_sources().values():
        source(prompts, completions)
    assert [moments(source) for source in restored.reward_sources().values()] == [moments(reward), moments(monitored)]
    restored.on_validation_end()
    assert all(source.training for source in restored.reward_sources().values())

    without_monitor = OnlinePolicyModule(ModelSettings("builtin:tiny-llama"), create_algorithm("rloo"), reward=gated())
    without_monitor.on_load_checkpoint(checkpoint)
    assert moments(without_monitor.reward_source) == moments(reward)
    assert "'monitor/gated'" in caplog.text  # said, not silently dropped

"""Resuming: a run killed mid-epoch and resumed from its last checkpoint ends where the
uninterrupted run ends (same weights, same loss); SIGTERM saves; a crash while saving
leaves the previous checkpoint whole.

Runs go through the real command (``lightning-rlhf fit``) with recipes written here:
24 rows, batch 8 (online plugins: 18 prompts, batch 6), so 3 steps per epoch, 2 epochs, a
checkpoint every step. The killed run gets SIGKILL right after step 5, before step 5 is saved, so it resumes from step 4:
epoch 1, one batch in.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_rlhf.training_cli import RLHFCLI
from tests.faults import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
KINDS = {
    "sft": ("sft", "lightning_rlhf.data.SFTDataModule", "tiny_sft.jsonl", {}),
    "dpo": ("dpo", "lightning_rlhf.data.PreferenceDataModule", "tiny_preferences.jsonl", {"beta": 0.1}),
    # 18 prompts, batch 6: 3 rollouts per epoch, one optimiser step each; adaptive KL so the
    # controller's state has to come back too.
    "ppo": (
        "ppo", "lightning_rlhf.data.PromptDataModule", "tiny_prompts.jsonl",
        {"ppo_epochs": 1, "minibatch_size": 8, "max_new_tokens": 8, "kl_target": 1.0, "missing_eos_penalty": 0.0},
    ),
    # G = 2 samples of 6 prompts per rollout, one step each; a reference for the k3 term
    # (grpo) and for the KL in the reward (reinforce_pp)
    "grpo": ("grpo", "lightning_rlhf.data.PromptDataModule", "tiny_prompts.jsonl", {"num_generations": 2, "beta": 0.04, "max_new_tokens": 8}),
    "reinforce_pp": (
        "reinforce_pp", "lightning_rlhf.data.PromptDataModule", "tiny_prompts.jsonl",
        {"num_generations": 2, "baseline": True, "beta": 0.01, "max_new_tokens": 8},
    ),
    # DAPO's dynamic sampling on: the tiny model's groups are mostly flat, so rollouts draw
    # refill prompts, and a resumed run must draw the same ones
    "dapo": ("grpo", "lightning_rlhf.data.PromptDataModule", "tiny_prompts.jsonl", {"num_generations": 2, "loss_type": "dapo", "max_new_tokens": 8}),
    "rloo": ("rloo", "lightning_rlhf.data.PromptDataModule", "tiny_prompts.jsonl", {"num_generations": 2, "beta": 0.05, "max_new_tokens": 8}),
    # a pair of samples per prompt, ranked by the reward (tied pairs left out), DPO against
    # the reference's log-probs taken in the rollout; one step per rollout
    "online_dpo": ("online_dpo", "lightning_rlhf.data.PromptDataModule", "tiny_prompts.jsonl", {"beta": 0.1, "max_new_tokens": 8}),
}
ONLINE = ("ppo", "grpo", "reinforce_pp", "dapo", "rloo", "online_dpo")
# Resumed here: dapo is the grpo plugin with dynamic sampling (the refill's random draws to
# restore as well), so it covers plain grpo; reinforce_pp differs from grpo in its
# advantages only, which carry no state across steps.
RESUMED_ONLINE = ("ppo", "dapo", "rloo", "online_dpo")
REWARD = {"class_path": "lightning_rlhf.rewards.FunctionReward", "init_args": {"function": "lightning_rlhf.rewards.rules.letter_e_reward"}}


def online_model_args(kind: str) -> dict:
    if kind not in ONLINE:
        return {}
    return {"reward": REWARD, **({"critic": {"share_policy_backbone": True}} if kind == "ppo" else {})}


def write_recipe(tmp_path: Path, kind: str, root: str, callbacks: list | None = None, name: str = "recipe") -> Path:
    algorithm, data_class, data_file, init_args = KINDS[kind]
    data = tmp_path / data_file
    if not data.exists():
        with open(ROOT / "recipes" / "data" / data_file) as f:
            data.write_text("".join(itertools.islice(f, 24)))
    recipe = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path / root),
            "callbacks": [
                {"class_path": "lightning_rlhf.callbacks.RunCheckpoint", "init_args": {"every_n_train_steps": 1}},
                *(callbacks or []),
            ],
        },
        "model": {
            "class_path": "lightning_rlhf.PolicyModule",
            "init_args": {
                "policy": {"name_or_path": "builtin:tiny-llama"},
                "algorithm": {"class_path": algorithm, "init_args": init_args},
                "optimizer": {"learning_rate": 1e-2, "warmup_ratio": 0.2},
                **online_model_args(kind),
            },
        },
        "data": {
            "class_path": data_class,
            "init_args": {"path": str(data), "batch_size": 6 if kind in ONLINE else 8, "max_length": 48},
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def fit_in_process(*args: str) -> RLHFCLI:
    return RLHFCLI(args=["fit", *args])


def fit_in_subprocess(recipe: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightning_rlhf.cli", "fit", "--config", str(recipe)],
        capture_output=True, text=True, timeout=300, env=subprocess_env(),
    )


def kill_at(step: int, signal_name: str = "SIGKILL") -> dict:
    return {"class_path": "tests.faults.KillAtStep", "init_args": {"step": step, "signal_name": signal_name}}


def policy_weights(cli: RLHFCLI) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in cli.model.policy.state_dict().items()}


@pytest.mark.parametrize("kind", ["sft", "dpo", *RESUMED_ONLINE])
def test_killed_mid_epoch_and_resumed_run_matches_uninterrupted_run(tmp_path, kind):
    whole = fit_in_process("--config", str(write_recipe(tmp_path, kind, "whole", name="whole")))
    assert whole.trainer.global_step == 6

    killed = fit_in_subprocess(write_recipe(tmp_path, kind, "killed", [kill_at(5)], name="killed"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)  # our checkpoints load safely
    assert checkpoint["global_step"] == 4
    (loader_state,) = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state == {"seed": 0, "epoch": 1, "batches": 1}  # mid-epoch: one batch into epoch 1
    assert {"torch", "python", "numpy"} <= set(checkpoint["rng_states"])

    # Both spellings of --ckpt_path: "last" (found in the run's folder) and a file path.
    ckpt_path = str(last) if kind in ONLINE else "last"
    resumed = fit_in_process("--config", str(write_recipe(tmp_path, kind, "killed", name="resume")), "--ckpt_path", ckpt_path)
    assert resumed.trainer.global_step == 6
    torch.testing.assert_close(
        resumed.trainer.callback_metrics["train/loss"], whole.trainer.callback_metrics["train/loss"], rtol=0, atol=1e-6
    )
    expected = policy_weights(whole)
    for name, value in policy_weights(resumed).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
    if kind == "ppo":  # the adaptive KL controller and score statistics came back too
        assert "algorithm_state" in checkpoint
        state, expected_state = resumed.model.algorithm.state_dict(), whole.model.algorithm.state_dict()
        assert state["kl_controller"]["beta"] != 0.05  # it adapted during the run (0.05 is where it starts)
        assert state["kl_controller"]["beta"] == pytest.approx(expected_state["kl_controller"]["beta"], rel=1e-9)
    # The resumed run changed the weights after loading them: it did train the last 2 steps.
    assert not torch.equal(checkpoint["state_dict"]["policy.lm_head.weight"], expected["lm_head.weight"])

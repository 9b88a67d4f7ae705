"""The tiny recipes run to the end through the command line and learn their data."""

from pathlib import Path

import pytest
import torch

from lightning_rlhf.training_cli import RLHFCLI


def run_recipe(recipe: str, root: Path, wandb: bool = True, *overrides: str) -> RLHFCLI:
    logger = ["--trainer.logger.init_args.save_dir", str(root)] if wandb else ["--trainer.logger", "false"]
    return RLHFCLI(
        args=[
            "fit",
            "--config", recipe,
            "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false",
            "--model.init_args.export_dir", str(root / "export"),
            *logger,
            *overrides,
        ]
    )


@pytest.mark.learns
def test_tiny_dpo_recipe_learns_its_pairs(tmp_path):
    cli = run_recipe("recipes/dpo/tiny.yaml", tmp_path)
    # Score the training pairs with the trained policy (validation pass, no updates).
    (metrics,) = cli.trainer.validate(cli.model, dataloaders=cli.datamodule.train_dataloader(), verbose=False)
    assert metrics["val/rewards/accuracies"] > 0.9
    assert metrics["val/loss"] < 0.5
    assert metrics["val/rewards/chosen"] > metrics["val/rewards/rejected"]

    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    state = cli.model.policy.state_dict()
    for key, value in exported.state_dict().items():
        torch.testing.assert_close(value, state[key])

    # The offline W&B run log holds the resolved recipe (config) and the DPO metrics.
    (run_log,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    records = run_log.read_bytes()
    assert b"tiny_preferences.jsonl" in records
    assert b"train/rewards/accuracies" in records


@pytest.mark.learns
def test_tiny_sft_recipe_lowers_nll(tmp_path):
    cli = run_recipe("recipes/sft/tiny.yaml", tmp_path, wandb=False)
    data = cli.datamodule.train_dataloader()
    (after,) = cli.trainer.validate(cli.model, dataloaders=data, verbose=False)
    # A fresh model's NLL per byte is about log(262) = 5.6; the trained one is far below.
    assert after["val/loss"] < 2.0


def test_export_command_from_checkpoint(tmp_path):
    from lightning_rlhf.cli import main

    cli = run_recipe("recipes/sft/tiny.yaml", tmp_path, False, "--trainer.max_epochs", "1")
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    assert main(["export", str(checkpoint), str(tmp_path / "from_ckpt")]) == 0
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "from_ckpt")
    state = cli.model.policy.state_dict()
    for key, value in exported.state_dict().items():
        torch.testing.assert_close(value, state[key])


def test_export_of_a_dpo_checkpoint_loads_the_policy_alone(tmp_path, monkeypatch):
    """Exporting a full-weight DPO checkpoint writes the trained policy without loading the
    reference model beside it (counted: one causal LM loaded, not two)."""
    from lightning_rlhf.cli import main
    from lightning_rlhf.modules import policy_base as policy_module

    cli = run_recipe("recipes/dpo/tiny.yaml", tmp_path, False, "--trainer.max_steps", "2")
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    loads = []
    original = policy_module.load_causal_lm
    monkeypatch.setattr(policy_module, "load_causal_lm", lambda *a, **k: loads.append(a[0].name_or_path) or original(*a, **k))
    assert main(["export", str(checkpoint), str(tmp_path / "from_ckpt")]) == 0
    assert len(loads) == 1
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "from_ckpt")
    state = cli.model.policy.state_dict()
    for key, value in exported.state_dict().items():
        torch.testing.assert_close(value, state[key])


def test_export_of_an_online_checkpoint(tmp_path):
    """``export`` finds the module that wrote a checkpoint: a GRPO run's comes back as an
    OnlinePolicyModule, its policy as trained."""
    from transformers import AutoModelForCausalLM

    from lightning_rlhf.cli import main
    from lightning_rlhf.modules.online_policy import OnlinePolicyModule
    from lightning_rlhf.modules.policy import PolicyModule

    cli = run_recipe("recipes/grpo/tiny.yaml", tmp_path, False, "--trainer.max_steps", "1", "--trainer.enable_checkpointing", "true")
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    assert type(PolicyModule.policy_from_checkpoint(checkpoint)) is OnlinePolicyModule
    assert main(["export", str(checkpoint), str(tmp_path / "from_ckpt")]) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "from_ckpt")
    state = cli.model.policy.state_dict()
    for key, value in exported.state_dict().items():
        torch.testing.assert_close(value, state[key])

"""An offline W&B run holds what a reader needs: the resolved recipe as its config, the
shared metric names, the run's name/group/tags, and a table of sample completions.

The run log is read record by record (``lightning_rlhf.tracking.read_offline_run``),
not searched for bytes.
"""

from __future__ import annotations

import json

from lightning_rlhf.training_cli import RLHFCLI
from lightning_rlhf.tracking import read_offline_run
from lightning_rlhf.callbacks.samples import COLUMNS


def length_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """A reward source for the table's reward column: completion length in characters."""
    return [float(len(c)) for c in completions]


def test_offline_wandb_run_holds_config_metrics_and_samples_table(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    # WandbLogger reuses a run left open in this process (an earlier test's): start clean.
    wandb.finish()
    samples = {
        "class_path": "lightning_rlhf.callbacks.SampleCompletionsCallback",
        "init_args": {"every_n_steps": 2, "num_prompts": 2, "max_new_tokens": 6, "reward": "test_tracking.length_reward"},
    }
    cli = RLHFCLI(args=[
        "fit", "--config", "recipes/dpo/tiny.yaml",
        "--trainer.max_steps", "2",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.logger.init_args.name", "dpo-check",
        "--trainer.callbacks+", json.dumps(samples),
        "--model.init_args.export_dir", "null",
    ])
    # the run log is complete once the run ends (at exit in a `lightning-rlhf fit` process)
    cli.trainer.logger.experiment.finish()
    (run_log,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    run = read_offline_run(run_log)

    assert (run.name, run.group, run.tags) == ("dpo-check", "tiny", ["dpo", "tiny"])
    recipe = run.config["recipe"]  # the fully resolved recipe, defaults included
    assert recipe["data"]["init_args"]["path"] == "recipes/data/tiny_preferences.jsonl"
    assert recipe["model"]["init_args"]["algorithm"]["init_args"] == {"beta": 0.1, "label_smoothing": 0.0}
    assert recipe["trainer"]["max_steps"] == 2

    shared = {f"train/{k}" for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                     "rewards/margins", "logps/chosen", "logps/rejected")}
    assert shared <= run.keys()

    rows_with_table = [row for row in run.history if "samples" in row]
    assert len(rows_with_table) == 1, run.history
    (table_row,) = rows_with_table
    table_ref = table_row["samples"]
    assert table_ref["_type"] == "table-file"
    table = json.loads((run_log.parent / "files" / table_ref["path"]).read_text())
    assert table["columns"] == COLUMNS
    assert len(table["data"]) == 2
    for step, prompt, completion, reward, reference in table["data"]:
        assert step == 2 and prompt and reference and isinstance(completion, str)
        assert isinstance(reward, float)


def test_offline_run_logs_checkpoints_as_artifacts_when_asked(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb.finish()
    cli = RLHFCLI(args=[
        "fit", "--config", "recipes/dpo/tiny.yaml",
        "--trainer.max_steps", "2",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.class_path", "lightning_rlhf.loggers.WandbLogger",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.logger.init_args.offline", "true",
        "--trainer.logger.init_args.log_model", "all",
        "--trainer.callbacks+", json.dumps(
            {"class_path": "lightning_rlhf.callbacks.RunCheckpoint", "init_args": {"every_n_train_steps": 1}}
        ),
        "--model.init_args.export_dir", "null",
    ])
    run_id = cli.trainer.logger.experiment.id
    cli.trainer.logger.experiment.finish()
    (run_log,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    artifacts = [a for a in read_offline_run(run_log).artifacts if a["type"] == "model"]

    # each checkpoint as it is written (step 1, then last.ckpt, step 2, last.ckpt again),
    # all versions of one model artifact of the run, the newest tagged latest
    assert [a["metadata"]["original_filename"] for a in artifacts] == [
        "epoch=0-step=1.ckpt", "last.ckpt", "epoch=0-step=2.ckpt", "last.ckpt",
    ]
    assert {a["name"] for a in artifacts} == {f"model-{run_id}"}
    assert all(a["files"] == ["model.ckpt"] for a in artifacts)
    assert "latest" in artifacts[-1]["aliases"]

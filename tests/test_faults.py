"""Faults inside a run: SIGTERM saves a checkpoint, a crash while saving leaves the
previous one whole, and a NaN loss stops (or is skipped) without spoiling checkpoints.

(The kill-and-resume equivalence is in test_resume.py.)
"""

from __future__ import annotations

import itertools
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_rlhf.callbacks import AtomicCheckpointIO, DivergenceError, DivergenceGuard, PreemptionCheckpoint, RunCheckpoint, RunState
from lightning_rlhf.data import SFTDataModule
from lightning_rlhf.modules.policy import PolicyModule
from lightning_rlhf.testing import make_policy_module
from lightning_rlhf_plugins.sft import SFT
from tests.faults import KillAtStep

ROOT = Path(__file__).resolve().parents[1]


class NaNAtCall(SFT):
    """SFT whose ``nan_at_call``-th loss (1-based) is NaN: a run that diverges at step 3."""

    name = None  # not registered: checkpoints name it by import path

    def __init__(self, nan_at_call: int = 3):
        self.nan_at_call = nan_at_call
        self.calls = 0

    def loss(self, ctx, batch):
        out = super().loss(ctx, batch)
        self.calls += 1
        if self.calls == self.nan_at_call:
            out.loss = out.loss * float("nan")
        return out


@pytest.fixture
def sft_rows(tmp_path) -> Path:
    path = tmp_path / "sft.jsonl"
    with open(ROOT / "recipes" / "data" / "tiny_sft.jsonl") as f:
        path.write_text("".join(itertools.islice(f, 24)))
    return path


def fit(tmp_path, rows, algorithm, callbacks, max_steps=6) -> tuple[L.Trainer, PolicyModule]:
    module = make_policy_module(algorithm, optimizer=None)
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[RunCheckpoint(every_n_train_steps=1), RunState(), *callbacks],
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(module, datamodule=SFTDataModule(path=str(rows), batch_size=4, max_length=48))
    return trainer, module


def load_last(tmp_path) -> dict:
    return torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_sigterm_writes_a_resumable_checkpoint(tmp_path, sft_rows):
    preemption = PreemptionCheckpoint()
    with pytest.raises(SIGTERMException):
        # Lightning's handler notes the signal, the batch finishes, then the loop exits.
        fit(tmp_path, sft_rows, SFT(), [KillAtStep(2, "SIGTERM"), preemption])
    assert preemption.saved_path == str(tmp_path / "checkpoints" / "last.ckpt")
    checkpoint = load_last(tmp_path)
    assert checkpoint["global_step"] == 2
    (loader_state,) = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state == {"seed": 0, "epoch": 0, "batches": 2}  # 6 batches an epoch: mid-epoch


def test_a_crash_while_saving_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)

    def crash_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.undo()
    kept = torch.load(path, weights_only=True)
    assert kept["global_step"] == 1 and torch.equal(kept["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, sft_rows):
    with pytest.raises(DivergenceError, match=r"step 3: loss is not finite") as error:
        fit(tmp_path, sft_rows, NaNAtCall(3), [DivergenceGuard()])
    assert "last.ckpt" in str(error.value)
    checkpoint = load_last(tmp_path)
    assert checkpoint["global_step"] == 2 and all_finite(checkpoint["state_dict"])
    module = PolicyModule.from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert all_finite(module.policy.state_dict())


def test_nan_loss_within_the_skip_budget_is_skipped(tmp_path, sft_rows):
    guard = DivergenceGuard(max_skipped_steps=1)
    trainer, module = fit(tmp_path, sft_rows, NaNAtCall(3), [guard], max_steps=4)
    assert trainer.global_step == 4 and guard.skipped_steps == 1
    assert all_finite(module.policy.state_dict()) and all_finite(load_last(tmp_path)["state_dict"])


def test_deferred_checks_refuse_to_save_a_bad_step(tmp_path, sft_rows):
    # Flags are read every 2 steps; step 3's weights are NaN in memory, but its checkpoint is refused.
    with pytest.raises(DivergenceError, match=r"step 3: loss is not finite"):
        fit(tmp_path, sft_rows, NaNAtCall(3), [DivergenceGuard(check_every_n_steps=2)])
    checkpoint = load_last(tmp_path)
    assert checkpoint["global_step"] == 2 and all_finite(checkpoint["state_dict"])

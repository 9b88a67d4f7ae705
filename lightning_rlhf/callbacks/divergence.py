"""Stop a run whose loss, gradients or rewards stop being finite, before it spoils its checkpoints."""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

# Quantity codes on the device flag tensor; 0 means "all finite".
_QUANTITIES = {1: "loss", 2: "gradient norm"}


class DivergenceError(RuntimeError):
    """The run met a non-finite loss, gradient norm or reward and stopped."""


class DivergenceGuard(Callback):
    """Stops the run at a NaN/inf loss, gradient norm or logged reward, naming step and quantity.

    What is checked, and when:

    - the **loss**, in ``on_before_backward`` (every micro-batch of an accumulated step);
    - the **gradient norm** ``||g||_2`` over trainable parameters, in
      ``on_before_optimizer_step``, i.e. after backward and before the weights move;
    - every logged training metric whose name holds ``reward`` or ``score``
      (``train/rewards/chosen``, ``train/objective/scores``...), read from ``trainer.callback_metrics`` at the next batch and at
      the end of training: Lightning fills those after ``on_train_batch_end``, so rewards
      are seen one step late. A non-finite reward with a finite loss has not touched the
      weights, so this costs nothing the checkpoints hold.

    Syncs. The flags are computed on the device; reading one is a host-device sync. With
    ``check_every_n_steps=1`` (default) the guard reads one bool per optimizer step, the
    price of deciding *before* ``optimizer.step()``: a bad step is dropped (its gradients
    are set to ``None``, which AdamW skips), so the weights, the optimiser state and every
    checkpoint stay finite. Against a forward and backward pass of a language model one
    scalar read is noise. With ``check_every_n_steps=N`` the flags accumulate on the device
    and are read every N steps, before every checkpoint is written (a checkpoint after a
    bad step is refused, so the last one on disk stays good) and at the end; steps cannot
    be skipped then, and the weights in memory may be non-finite when it stops.

    On a bad step: with ``max_skipped_steps=k`` the first k bad steps are dropped with a
    warning, the next one stops the run. Stopping raises ``DivergenceError`` from
    ``on_train_batch_end``, which runs before ``ModelCheckpoint``'s (Lightning orders
    checkpoint callbacks last), so the bad step is never saved.
    """

    def __init__(self, max_skipped_steps: int = 0, check_every_n_steps: int = 1, check_rewards: bool = True):
        """
        Args:
            max_skipped_steps: bad steps to drop (no weight update) before stopping
            check_every_n_steps: read the finite-flags every N optimizer steps (1: every step,
                which is what allows skipping)
            check_rewards: also stop on a non-finite logged metric whose name holds ``reward`` or ``score``
        """
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        if max_skipped_steps > 0 and check_every_n_steps != 1:
            raise ValueError("skipping bad steps needs a check before every step: set check_every_n_steps=1")
        self.max_skipped_steps = max_skipped_steps
        self.check_every_n_steps = check_every_n_steps
        self.check_rewards = check_rewards
        self.skipped_steps = 0
        self._loss_code: torch.Tensor | None = None  # this step's loss flag (0 or 1)
        self._first_bad: torch.Tensor | None = None  # [step, code] of the first bad step not yet read
        self._failure: str | None = None

    # -- flags, on the device ------------------------------------------------------------------
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        code = (~torch.isfinite(loss.detach())).to(torch.int64)
        self._loss_code = code if self._loss_code is None else torch.maximum(self._loss_code, code)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        step = trainer.global_step + 1  # the step about to be taken, counted from 1
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_bad = torch.zeros((), dtype=torch.bool, device=pl_module.device)
        if params:
            norms = torch._foreach_norm([p.grad.detach() for p in params])
            grad_bad = ~torch.isfinite(torch.linalg.vector_norm(torch.stack([n.float() for n in norms])))
        loss_code = self._loss_code if self._loss_code is not None else torch.zeros((), dtype=torch.int64, device=grad_bad.device)
        self._loss_code = None
        # the loss explains the gradients: name it first
        code = torch.where(loss_code > 0, 1, torch.where(grad_bad, 2, 0))
        if self.check_every_n_steps == 1:
            code = int(code)  # the one sync per step, see the class docstring
            if code:
                self._bad_step(step, _QUANTITIES[code], params)
            return
        current = torch.stack([torch.as_tensor(step, device=code.device), code])
        if self._first_bad is None:
            self._first_bad = torch.zeros_like(current)
        self._first_bad = torch.where(self._first_bad[1] > 0, self._first_bad, current)
        if step % self.check_every_n_steps == 0:
            self._read_flags()

    def _bad_step(self, step: int, quantity: str, params: list[torch.Tensor]) -> None:
        if self.skipped_steps < self.max_skipped_steps:
            self.skipped_steps += 1
            for p in params:
                p.grad = None
            log.warning(
                "step %d: %s is not finite; skipped the step (%d of %d allowed)",
                step, quantity, self.skipped_steps, self.max_skipped_steps,
            )
            return
        for p in params:  # do not let the bad gradients reach the weights on the way out
            p.grad = None
        self._failure = f"step {step}: {quantity} is not finite (NaN or inf)"

    def _read_flags(self) -> None:
        if self._first_bad is None:
            return
        step, code = (int(x) for x in self._first_bad.tolist())
        self._first_bad = None
        if code and self._failure is None:
            self._failure = f"step {step}: {_QUANTITIES[code]} is not finite (NaN or inf)"

    def _read_rewards(self, trainer: L.Trainer) -> None:
        if not self.check_rewards or self._failure is not None:
            return
        for name, value in trainer.callback_metrics.items():
            if name.startswith("train/") and ("reward" in name or "score" in name) and not torch.isfinite(torch.as_tensor(value)).all():
                self._failure = f"step {trainer.global_step}: {name} is not finite (NaN or inf)"
                return

    # -- decisions -----------------------------------------------------------------------------
    def _stop_if_failed(self, trainer: L.Trainer) -> None:
        if self._failure is None:
            return
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or getattr(
            trainer.checkpoint_callback, "best_model_path", ""
        )
        where = f"; the last good checkpoint is {last}" if last else ""
        message, self._failure = self._failure, None
        raise DivergenceError(f"{message}: the run stopped{where}")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._read_rewards(trainer)
        self._stop_if_failed(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop_if_failed(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # Refusing here aborts the save before a byte is written: the previous file stays.
        self._read_flags()
        self._stop_if_failed(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._read_flags()
        self._read_rewards(trainer)
        self._stop_if_failed(trainer)

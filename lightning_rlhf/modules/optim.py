"""Optimiser and learning-rate schedule settings shared by the modules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class OptimizerSettings:
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_ratio: float = 0.0
    """share of the training steps spent warming up linearly from 0"""
    schedule: str = "cosine"
    """after warm-up: cosine (to 0), linear (to 0) or constant"""
    fused: bool = True
    """PyTorch's fused AdamW kernel (one pass over each parameter, CPU and CUDA; what
    Hugging Face's Trainer uses by default); False: the per-parameter loop"""

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"schedule must be cosine, linear or constant, got {self.schedule!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")

    def build(self, parameters, total_steps: int, extra_groups: list[dict] | None = None):
        """AdamW and its schedule; ``extra_groups`` are further parameter groups with their own
        settings (e.g. a critic's learning rate), on the same schedule."""
        params = [p for p in parameters if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]  # biases and norms are not decayed
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0},
                  *(extra_groups or [])]
        optimizer = torch.optim.AdamW(
            groups, lr=self.learning_rate, betas=tuple(self.betas), eps=self.eps,
            fused=self.fused and _fusable([p for g in groups for p in g["params"]]),
        )
        # A fused optimizer tells a GradScaler that it unscales gradients itself, and Lightning
        # then refuses gradient clipping under 16-/bf16-mixed. Opting out makes the scaler (fp16)
        # unscale before the step, as for any optimizer, so clipping sees true gradients.
        optimizer._step_supports_amp_scaling = False
        warmup = int(self.warmup_ratio * total_steps)
        schedule = self.schedule

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            if schedule == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * progress))
            if schedule == "linear":
                return 1.0 - progress
            return 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _fusable(parameters) -> bool:
    """The fused kernel takes floating-point tensors on CPU or CUDA (not e.g. meta or
    4-bit storage)."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in parameters)

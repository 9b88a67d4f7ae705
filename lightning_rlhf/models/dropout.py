"""Dropout off, everywhere a model keeps it.

With dropout on, two forwards of the same tokens disagree: chosen and rejected, policy
and reference, old and new log-probs, old and new values would carry noise the losses
read as signal. Dropout hides in two places: ``nn.Dropout`` modules (LoRA's included),
and attention dropout kept as a float that attention applies itself while training
(Llama, Qwen, Mistral: ``module.attention_dropout``; ``config.attention_dropout`` for
modules built later).
"""

from __future__ import annotations

import torch

# Float attributes that attention implementations read as a dropout probability.
_FLOAT_DROPOUT_ATTRIBUTES = ("attention_dropout", "dropout", "attn_dropout", "dropout_p")


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in _FLOAT_DROPOUT_ATTRIBUTES:
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
        config = getattr(module, "config", None)
        if config is not None and isinstance(getattr(config, "attention_dropout", None), float):
            config.attention_dropout = 0.0


def dropout_left(model: torch.nn.Module) -> list[str]:
    """Names of the modules that would still drop something while training (empty: none)."""
    left = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            left.append(name)
        elif any(isinstance(getattr(module, a, None), float) and getattr(module, a) > 0 for a in _FLOAT_DROPOUT_ATTRIBUTES):
            left.append(name)
    return left

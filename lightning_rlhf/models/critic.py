"""The critic of an online algorithm: a value V(state) for every completion position.

Two shapes (InstructGPT initialises its value function from the reward model; Huang et
al. 2024 do the same; a head on the policy's backbone halves the memory):

- a **separate value model**: a sequence-classification backbone whose scalar ``score``
  head is applied at *every* position, initialised from a reward-model directory when
  the reward is a trained reward model (default), else from the policy's weights with a
  fresh head. It may carry its own LoRA adapters.
- a **value head on the policy's backbone** (``share_policy_backbone``): a linear layer
  on the policy's final hidden states; the value loss then also trains the backbone.

Values are aligned with :class:`~lightning_rlhf.algorithm.SequenceLogps`: ``values[:, t]``
is V of the state that emits token t+1, i.e. the head on hidden state t.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lightning_rlhf.models import builtin
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.models.loading import apply_lora, load_tokenizer, unwrap


@dataclass
class CriticSettings:
    """Where the critic (value model) comes from."""

    model: ModelSettings | None = None
    """the value model's weights; default: the reward model's directory when the reward is
    a trained reward model, else the policy's weights (with a fresh scalar head)"""
    share_policy_backbone: bool = False
    """a value head on the policy's backbone instead of a separate model"""
    learning_rate: float | None = None
    """the critic's learning rate; default: the policy's"""
    max_grad_norm: float | None = None
    """clip the critic's gradient norm (the value head's, with ``share_policy_backbone``) on
    its own before each step; default: ``online.max_grad_norm``"""


class ValueHead(torch.nn.Module):
    """A linear map from a hidden state to a scalar value, initialised at zero output."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.score = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.normal_(self.score.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        torch.nn.init.zeros_(self.score.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.score(hidden.to(self.score.weight.dtype)).squeeze(-1).float()


def load_value_model(settings: ModelSettings, policy_tokenizer) -> torch.nn.Module:
    """A trainable sequence-classification model to use as a per-token critic.

    A reward model exported as a LoRA adapter is merged first; then ``settings.lora`` (if
    any) puts fresh adapters on it, with the score head trained in full.
    """
    from lightning_rlhf.models.reward_head import load_reward_model
    from lightning_rlhf.rewards.reward_model_source import load_exported_reward_model

    tokenizer = load_tokenizer(settings)
    if tokenizer.get_vocab() != policy_tokenizer.get_vocab():
        raise ValueError(
            f"the critic {settings.name_or_path!r} must share the policy's tokenizer (it reads the policy's "
            "tokens); give critic.model with the policy's vocabulary, or share_policy_backbone: true"
        )
    directory = Path(builtin.resolve(settings.name_or_path)).expanduser()
    if (directory / "adapter_config.json").exists():
        model, _ = load_exported_reward_model(str(directory), settings.dtype if settings.dtype != "auto" else "float32")
        model.requires_grad_(True)
        model.train()
        return apply_lora(model, settings.lora, "SEQ_CLS") if settings.lora is not None else model
    return load_reward_model(settings, tokenizer, trainable=True).train()


def value_model_values(model: torch.nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """``[N, T-1]`` float32 values from a sequence-classification model's head at every position."""
    from lightning_rlhf.models.reward_head import SCORE_HEAD, _head_dtype

    hf_model = unwrap(model)
    backbone = getattr(hf_model, hf_model.base_model_prefix)
    hidden = backbone(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state[:, :-1]
    head = getattr(hf_model, SCORE_HEAD)
    return head(hidden.to(_head_dtype(head))).squeeze(-1).float()


def head_values(policy: torch.nn.Module, head: ValueHead, batch: dict[str, Tensor]) -> Tensor:
    """``[N, T-1]`` values from a value head on the policy's backbone (adapters on)."""
    hidden = unwrap(policy).get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state[:, :-1]
    return head(hidden)

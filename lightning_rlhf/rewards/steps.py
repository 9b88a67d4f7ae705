"""A process reward model as a reward source: a verdict on every step, then one number."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from transformers import AutoTokenizer

from lightning_rlhf.data.collate import pad_sequences
from lightning_rlhf.data.stepwise import split_steps, step_token_spans
from lightning_rlhf.models.implicit_prm import ImplicitStepScorer, is_implicit_prm
from lightning_rlhf.models.reward_head import position_rewards
from lightning_rlhf.rewards.base import RewardSource

Aggregation = Literal["min", "product", "last"]


def aggregate_steps(probabilities: Sequence[float], aggregation: Aggregation) -> float:
    """One score from the per-step probabilities that each step is right: ``min`` (the
    weakest step, Lightman et al. 2023 and Wang et al. 2024 use it), ``product`` (the
    probability that every step is right, Lightman et al.'s solution score), ``last``
    (the final step's). A completion with no step scores NaN (left out by the online
    plugins)."""
    if not probabilities:
        return math.nan
    if aggregation == "min":
        return min(probabilities)
    if aggregation == "product":
        return math.prod(probabilities)
    if aggregation == "last":
        return probabilities[-1]
    raise ValueError(f"aggregation must be min, product or last, got {aggregation!r}")


class StepRewardSource(RewardSource):
    """A process reward model exported by ``RewardModule`` with the ``prm`` plugin (an
    ``AutoModelForTokenClassification`` directory with one output), or an implicit one by
    ``ImplicitPRMModule`` (``models.implicit_prm``: the step's log-likelihood ratio),
    scoring each step.

    A completion is split into steps on ``step_separator`` (``data.stepwise.split_steps``),
    the prompt and completion are tokenised as one text, and the model's score at each
    step's last token (separator included) becomes the probability ``sigmoid(z)`` that
    the step is right: exactly where training read it. :meth:`step_scores` returns them;
    calling the source aggregates them (``aggregation``), so it serves wherever a reward
    source does (best-of-n, rejection sampling, ``label``, the online plugins).
    """

    def __init__(
        self,
        path: str,
        aggregation: Aggregation = "min",
        step_separator: str = "\n",
        batch_size: int = 16,
        device: str = "auto",
        dtype: str = "float32",
        max_length: int = 1024,
        max_token_log_ratio: float | None = None,
    ):
        """
        Args:
            path: directory written by ``RewardModule.save_pretrained`` for a ``prm`` run
            aggregation: min, product or last: how step probabilities become one score
            step_separator: the separator the model was trained with (the data module's
                ``step_separator``)
            batch_size: sequences per forward pass
            device: ``auto`` (CUDA if there is one), ``cpu``, ``cuda``, ...
            dtype: float32, bfloat16 or float16
            max_length: longest sequence scored, in the model's tokens; steps past it are
                not scored
            max_token_log_ratio: an implicit PRM's cap on each token's log pi_theta - log pi_ref
                (``models.implicit_prm``; at 0 a token the fine-tuned LM made likelier counts for
                nothing); None: the cap the export's ``implicit_prm.json`` holds (none unless
                written there); ``.inf``: no cap, whatever the export says. A head PRM has no
                log-ratio: setting it there is an error
        """
        if aggregation not in ("min", "product", "last"):
            raise ValueError(f"aggregation must be min, product or last, got {aggregation!r}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.path, self.aggregation, self.step_separator = path, aggregation, step_separator
        self.batch_size, self.device, self.dtype, self.max_length = batch_size, device, dtype, max_length
        self.max_token_log_ratio = max_token_log_ratio
        self._device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                    "cpu" if device == "auto" else device)
        if is_implicit_prm(path):  # models.implicit_prm: scored by log-likelihood ratio, not a head
            self.model = ImplicitStepScorer.from_pretrained(path, getattr(torch, dtype) if dtype != "auto" else "auto")
            if max_token_log_ratio is not None:
                self.model.max_token_log_ratio = None if math.isinf(max_token_log_ratio) else max_token_log_ratio
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            if self.tokenizer.pad_token_id is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        elif max_token_log_ratio is not None:
            raise ValueError(f"max_token_log_ratio caps an implicit PRM's log-ratios; {path} is a head PRM (a token classifier)")
        else:
            self.model, self.tokenizer = load_exported_process_reward_model(path, dtype)
        self.model.to(self._device)

    @torch.no_grad()
    def step_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> list[list[float]]:
        """Per completion, the probability that each of its steps is right, in order."""
        encoded = [step_token_spans(self.tokenizer, p, split_steps(c, self.step_separator), self.step_separator,
                                    self.max_length) for p, c in zip(prompts, completions, strict=True)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))  # less padding
        result: list[list[float]] = [[] for _ in encoded]
        for start in range(0, len(order), self.batch_size):
            chunk = [i for i in order[start : start + self.batch_size] if encoded[i][2]]
            if not chunk:
                continue
            batch = pad_sequences([([], encoded[i][0]) for i in chunk], self.tokenizer.pad_token_id)
            width = batch["input_ids"].shape[1]
            ends = torch.tensor([row * width + p for row, i in enumerate(chunk) for p in encoded[i][2]], device=self._device)
            input_ids, attention_mask = batch["input_ids"].to(self._device), batch["attention_mask"].to(self._device)
            if isinstance(self.model, ImplicitStepScorer):
                starts = torch.tensor([row * width + p for row, i in enumerate(chunk) for p in encoded[i][1]], device=self._device)
                scores = self.model(input_ids, attention_mask, starts, ends)
            else:
                scores = position_rewards(self.model, input_ids, attention_mask, ends)
            probabilities = torch.sigmoid(scores).cpu().tolist()
            for i in chunk:
                count = len(encoded[i][2])
                result[i], probabilities = probabilities[:count], probabilities[count:]
        return result

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        steps = self.step_scores(prompts, completions)
        return torch.tensor([aggregate_steps(s, self.aggregation) for s in steps], dtype=torch.float32)


def is_process_reward_model(path: str) -> bool:
    """The directory holds a process reward model: a token classifier (a ``prm`` export,
    not a sequence classifier) or an implicit PRM (``models.implicit_prm``)."""
    return is_implicit_prm(path) or _is_token_classifier(path)


def _is_token_classifier(path: str) -> bool:
    import json
    from pathlib import Path

    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text()).get("architectures") or []
    return any(a.endswith("ForTokenClassification") for a in architectures)


def load_exported_process_reward_model(path: str, dtype: str = "float32"):
    """(model in eval mode, frozen; tokenizer) from a ``prm`` export directory."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    if not _is_token_classifier(path):
        raise ValueError(f"{path} is not a process reward model: its config.json names no *ForTokenClassification "
                         "architecture (export one with RewardModule and the prm plugin)")
    torch_dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
    model = AutoModelForTokenClassification.from_pretrained(path, dtype=torch_dtype)
    if model.config.num_labels != 1:
        raise ValueError(f"{path}: a process reward model has one output per token, this one has {model.config.num_labels}")
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer

"""A trained reward model as a reward source: text in, its own tokenizer, scalars out."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from lightning_rlhf.rewards.base import RewardSource

log = logging.getLogger(__name__)


class RewardModelSource(RewardSource):
    """A reward model exported by ``RewardModule`` (or any ``AutoModelForSequenceClassification``
    directory with one output), scoring text with its own tokenizer.

    Each (prompt, completion) is rendered as training rendered it (plain concatenation;
    with ``chat_template`` as a user turn and an assistant reply, or a chat prompt's own
    conversation followed by the reply: ``data.prompts.ChatPrompt``), tokenised by the
    reward model's tokenizer with EOS after the completion, and scored at its last
    token. So the policy being scored may use any tokenizer at all.

    Scores are ``(r - offset) / scale``; :meth:`normalize_with` sets both so that
    reference completions score mean 0 (and, optionally, standard deviation 1).
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 16,
        device: str = "auto",
        dtype: str = "float32",
        max_length: int = 1024,
        max_prompt_length: int | None = None,
        chat_template: bool = False,
        offset: float = 0.0,
        scale: float = 1.0,
    ):
        """
        Args:
            path: directory written by ``RewardModule.save_pretrained`` / ``lightning-rlhf
                export`` (merged weights, or a LoRA adapter with its score head)
            batch_size: sequences per forward pass
            device: ``auto`` (CUDA if there is one), ``cpu``, ``cuda``, ``cuda:1``, ...
            dtype: float32, bfloat16 or float16 (``auto``: as stored)
            max_length: longest sequence scored, in the reward model's tokens; longer
                text is cut as in training (prompt from the left, completion from the right)
            max_prompt_length: longest prompt (default: half of ``max_length``)
            chat_template: render each pair as ``[user: prompt, assistant: completion]``
                with the reward model's chat template, for reward models trained on
                conversations; off: plain prompt + completion text
            offset: subtracted from every raw score (see :meth:`normalize_with`)
            scale: the shifted score is divided by this
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.path, self.batch_size, self.device, self.dtype = path, batch_size, device, dtype
        self.max_length, self.max_prompt_length, self.chat_template = max_length, max_prompt_length, chat_template
        self.offset, self.scale = offset, scale
        self._device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                    "cpu" if device == "auto" else device)
        # Imported here: ``lightning_rlhf.rewards`` stays cheap to import for rule-based sources.
        from lightning_rlhf.data.tokenize import Tokenization

        self.model, self.tokenizer = load_exported_reward_model(path, dtype)
        self.model.to("cpu" if self._device_is_lazy() else self._device)  # a bare "cuda" is placed in _scoring_device
        self._tokenization = Tokenization(self.tokenizer, max_length, max_prompt_length)
        if chat_template and not self._tokenization.chat_template:
            raise ValueError(f"chat_template is on, but the tokenizer in {path} has no chat template")

    def encode(self, prompt: str, completion: str) -> list[int]:
        """The reward model's token ids for one pair, exactly as it is scored."""
        if self.chat_template:
            # A chat prompt arrives rendered by the policy's template: render its messages
            # with ours instead of wrapping the rendered text a second time.
            messages = getattr(prompt, "messages", None) or [{"role": "user", "content": prompt}]
            prompt_text, completion_text = self._tokenization.render(messages, [{"role": "assistant", "content": completion}])
        else:
            prompt_text, completion_text = prompt, completion
        tokens = self._tokenization.truncate(
            self._tokenization.prompt_ids(prompt_text), self._tokenization.completion_ids(completion_text)
        )
        if tokens is None:  # only an empty prompt with a one-token completion gets here
            return self._tokenization.completion_ids(completion_text)[: self.max_length]
        return tokens.prompt_ids + tokens.completion_ids

    @torch.no_grad()
    def raw_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """``[N]`` float32 scores before ``offset`` and ``scale``."""
        from lightning_rlhf.data.collate import pad_sequences
        from lightning_rlhf.models.reward_head import sequence_rewards

        encoded = [self.encode(p, c) for p, c in zip(prompts, completions, strict=True)]
        # Similar lengths together waste less padding; the score does not depend on it.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        scores = torch.empty(len(encoded), dtype=torch.float32)
        device = self._scoring_device()
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = pad_sequences([([], encoded[i]) for i in chunk], self.tokenizer.pad_token_id)
            rewards = sequence_rewards(self.model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
            scores[torch.tensor(chunk)] = rewards.cpu()
        return scores

    def _device_is_lazy(self) -> bool:
        return self._device.type == "cuda" and self._device.index is None

    def _scoring_device(self) -> torch.device:
        """A bare ``cuda`` (``device: auto`` on a GPU machine, or ``cuda``) is this process's
        current GPU, looked up when scoring starts, not when the recipe is read: under DDP
        every process builds its reward source before Lightning sets its GPU, and a copy
        placed then would land on GPU 0 in every process."""
        if self._device_is_lazy():
            self._device = torch.device("cuda", torch.cuda.current_device())
            self.model.to(self._device)
        return self._device

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        return (self.raw_scores(prompts, completions) - self.offset) / self.scale

    def normalize_with(
        self, prompts: Sequence[str], reference_completions: Sequence[str], unit_std: bool = False
    ) -> tuple[float, float]:
        """Set ``offset`` (and with ``unit_std`` also ``scale``) from reference samples, e.g.
        the SFT policy's completions, so that they score mean 0 (and std 1) from now on.
        Returns ``(offset, scale)``, to put in a config and skip this next time."""
        raw = self.raw_scores(prompts, reference_completions).double()
        self.offset = raw.mean().item()
        self.scale = max(raw.std().item(), 1e-6) if unit_std and len(raw) > 1 else 1.0
        log.info("reward model %s normalised: offset %.4f, scale %.4f", self.path, self.offset, self.scale)
        return self.offset, self.scale


def load_exported_reward_model(path: str, dtype: str = "float32"):
    """``(model, tokenizer)`` from an exported reward model: merged weights, or a peft
    adapter (LoRA plus the score head) over the base model it names; frozen, eval mode."""
    from lightning_rlhf.models import builtin
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.models.loading import load_tokenizer
    from lightning_rlhf.models.reward_head import load_reward_model

    directory = Path(builtin.resolve(path)).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"reward model directory {path!r} does not exist")
    tokenizer = load_tokenizer(ModelSettings(name_or_path=str(directory)))
    adapter_config = directory / "adapter_config.json"
    if not adapter_config.exists():
        model = load_reward_model(ModelSettings(name_or_path=str(directory), dtype=dtype), tokenizer, trainable=False)
        return model, tokenizer
    from peft import PeftModel

    base_path = json.loads(adapter_config.read_text())["base_model_name_or_path"]
    base = load_reward_model(ModelSettings(name_or_path=base_path, dtype=dtype), tokenizer, trainable=False)
    model = PeftModel.from_pretrained(base, str(directory)).merge_and_unload()
    return model.eval(), tokenizer

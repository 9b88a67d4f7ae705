"""From text to token ids, with one documented truncation policy.

Truncation policy (both SFT and preference data):

1. the prompt keeps its *last* ``max_prompt_length`` tokens (truncated from the left,
   so the words right before the answer survive); ``max_prompt_length`` defaults to
   half of ``max_length``;
2. the completion, with EOS appended, keeps its *first* tokens up to what fits in
   ``max_length`` beside the prompt (truncated from the right);
3. a row whose completion keeps no token is dropped, and counted in the log.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from lightning_rlhf.data.formats import Text


class RenderError(ValueError):
    pass


@dataclass
class TokenizedCompletion:
    prompt_ids: list[int]
    completion_ids: list[int]


class Tokenization:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        max_prompt_length: int | None = None,
        chat_template: str | None = None,
    ):
        if max_prompt_length is None:
            max_prompt_length = max_length // 2
        if not 0 < max_prompt_length < max_length:
            raise ValueError(f"need 0 < max_prompt_length < max_length, got {max_prompt_length} and {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        self.drops: Counter[str] = Counter()

    def render(self, prompt: Text, completion: Text) -> tuple[str, str]:
        """Prompt and completion as the strings the model reads."""
        if isinstance(completion, str):
            return prompt if isinstance(prompt, str) else "", completion
        if not self.chat_template:
            raise RenderError(
                "conversational data needs a chat template, and the tokenizer has none; "
                "set the data module's chat_template"
            )
        prompt_text = self.tokenizer.apply_chat_template(
            prompt, chat_template=self.chat_template, add_generation_prompt=True, tokenize=False
        ) if prompt else ""
        full_text = self.tokenizer.apply_chat_template(
            list(prompt) + list(completion), chat_template=self.chat_template, tokenize=False
        )
        if not full_text.startswith(prompt_text):
            raise RenderError("the chat template renders the prompt differently when a reply follows it")
        return prompt_text, full_text[len(prompt_text):]

    def prompt_ids(self, prompt_text: str) -> list[int]:
        # Special tokens (BOS) belong to the start of the sequence, i.e. the prompt; a chat
        # template writes its own, so they are only added to plain text.
        add_special = not (self.chat_template and prompt_text and self._starts_with_bos(prompt_text))
        return self.tokenizer(prompt_text, add_special_tokens=add_special)["input_ids"]

    def _starts_with_bos(self, text: str) -> bool:
        bos = self.tokenizer.bos_token
        return bool(bos) and text.startswith(bos)

    def completion_ids(self, completion_text: str) -> list[int]:
        ids = self.tokenizer(completion_text, add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        return ids

    def truncate(self, prompt_ids: list[int], completion_ids: list[int]) -> TokenizedCompletion | None:
        prompt_ids = prompt_ids[-self.max_prompt_length :]
        completion_ids = completion_ids[: self.max_length - len(prompt_ids)]
        # With no prompt the first token has nothing to be predicted from.
        if len(completion_ids) - (0 if prompt_ids else 1) <= 0:
            return None
        return TokenizedCompletion(prompt_ids, completion_ids)

    def encode(self, prompt: Text, completion: Text) -> TokenizedCompletion | None:
        """Render, tokenise and truncate one prompt/completion; None (counted) to drop it."""
        prompt_text, completion_text = self.render(prompt, completion)
        if not completion_text.strip():
            self.drop("empty completion")
            return None
        tokens = self.truncate(self.prompt_ids(prompt_text), self.completion_ids(completion_text))
        if tokens is None:
            self.drop("completion empty after truncation")
        return tokens

    def drop(self, reason: str) -> None:
        self.drops[reason] += 1

    def drop_report(self, total: int, source: str) -> str | None:
        if not self.drops:
            return None
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.drops.most_common())
        return f"dropped {sum(self.drops.values())} of {total} rows from {source}: {reasons}"

"""Prompt-only data for online algorithms (PPO): the policy writes the completions.

Rows::

    {"prompt": "How was the film?"}
    {"prompt": [{"role": "user", "content": "Hi"}]}     # rendered with the chat template

A prompt keeps its last ``max_prompt_length`` tokens (default: half of ``max_length``;
the rest of ``max_length`` is left for the completion). A batch of B prompts is::

    prompt_ids   list of B token-id lists (BOS included), not padded
    prompts      list of B strings: the text the reward source is given with each completion
                 (a conversational prompt as rendered by the policy's chat template, as a
                 :class:`ChatPrompt` that also carries the messages)
    columns      list of B dicts: the row's other columns (a reference ``answer``, ``tests``,
                 metadata), handed to reward sources that read them

A reward model with a chat template of its own renders a :class:`ChatPrompt` from its
messages, not from the policy's rendering (which would wrap the template twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lightning_rlhf.data.formats import RowChecker, Text
from lightning_rlhf.data.modules import TextDataModule
from lightning_rlhf.data.tokenize import RenderError, Tokenization


@dataclass
class PromptExample:
    prompt: Text
    columns: dict = field(default_factory=dict)
    """the row's other columns"""


class ChatPrompt(str):
    """A conversational prompt as the policy reads it (rendered by its chat template), with
    the conversation it came from in ``messages``; anywhere a string goes, it is that string."""

    messages: list[dict]

    def __new__(cls, rendered: str, messages: list[dict]) -> ChatPrompt:
        prompt = super().__new__(cls, rendered)
        prompt.messages = messages
        return prompt

    def __reduce__(self):
        return (ChatPrompt, (str(self), self.messages))


def parse_prompt(checker: RowChecker) -> PromptExample:
    if not checker.has("prompt"):
        raise checker.error("prompt", f"missing; a prompt row needs 'prompt', it has {checker.columns_present}")
    return PromptExample(checker.text("prompt"), {key: value for key, value in checker.record.items() if key != "prompt"})


def render_prompt(tokenization: Tokenization, prompt: Text) -> str:
    """A prompt as the model reads it; a message list ends with the assistant's cue."""
    if isinstance(prompt, str):
        return prompt
    if not tokenization.chat_template:
        raise RenderError("conversational prompts need a chat template, and the tokenizer has none; set chat_template")
    return tokenization.tokenizer.apply_chat_template(
        prompt, chat_template=tokenization.chat_template, add_generation_prompt=True, tokenize=False
    )


class PromptCollator:
    def __call__(self, rows: list[dict]) -> dict:
        return {"prompt_ids": [r["prompt_ids"] for r in rows], "prompts": [r["prompt"] for r in rows],
                "columns": [r.get("columns", {}) for r in rows]}


class PromptDataModule(TextDataModule):
    """Prompts for online algorithms (see ``data.prompts``)."""

    data_kind = "prompt"
    fields = ("prompt",)

    def __init__(self, *args, instruction: str | None = None, **kwargs):
        """
        Args:
            instruction: makes each plain-text prompt a conversation for an instruct model:
                one user message, the prompt, a blank line and this text (e.g. how to mark
                the final answer), rendered with the chat template
        """
        super().__init__(*args, **kwargs)
        self.instruction = instruction

    def parse(self, checker: RowChecker) -> PromptExample:
        example = parse_prompt(checker)
        if self.instruction is not None and isinstance(example.prompt, str):
            example.prompt = [{"role": "user", "content": f"{example.prompt}\n\n{self.instruction}"}]
        return example

    def encode(self, example: PromptExample, tokenization: Tokenization) -> dict | None:
        text = render_prompt(tokenization, example.prompt)
        if not text.strip():
            tokenization.drop("empty prompt")
            return None
        ids = tokenization.prompt_ids(text)[-tokenization.max_prompt_length :]
        prompt = text if isinstance(example.prompt, str) else ChatPrompt(text, example.prompt)
        return {"prompt_ids": ids, "prompt": prompt, "columns": example.columns}

    def collator(self):
        return PromptCollator()

"""Step-labelled data: a solution cut into steps, each marked right or wrong.

Rows, in the layout TRL's PRM trainer and the public step-labelled sets (PRM800K,
Math-Shepherd as converted for TRL) use::

    {"prompt": "What is 4+7+2?", "completions": [" 4+7=11", " 11+2=13", " Answer: 13"],
     "labels": [true, true, true]}

``completions`` holds the steps of one solution in order, ``labels`` one verdict per step
(``true``/``false`` or 1/0). The solution the model reads is the prompt followed by the
steps joined by ``step_separator``: ``prompt + sep.join(steps)``, so that a sampled
completion split on the same separator (:func:`split_steps`) gives back exactly the steps
a model was trained on. A step's score is read at the last token of the step and the
separator after it (the last step: its own last token), where the model has read the
whole step.

A batch of B solutions::

    input_ids       [B, T]  right-padded, BOS included
    attention_mask  [B, T]
    step_index      [S]     flat indices into [B * T] of the S steps' scoring positions
    step_start_index [S]    flat indices of each step's first token (a step covers its
                            tokens from here to its scoring position, both included)
    step_labels     [S]     1.0 for a right step, 0.0 for a wrong one
    step_row        [S]     which solution of the batch each step belongs to
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_rlhf.data.collate import pad_sequences
from lightning_rlhf.data.formats import RowChecker
from lightning_rlhf.data.modules import TextDataModule
from lightning_rlhf.data.tokenize import Tokenization


@dataclass
class StepwiseExample:
    prompt: str
    steps: list[str]
    labels: list[bool]


def parse_stepwise(checker: RowChecker) -> StepwiseExample:
    prompt = checker.text("prompt")
    if not isinstance(prompt, str):
        raise checker.error("prompt", "step-labelled rows take a plain-text prompt, not a list of messages")
    steps = _string_list(checker, "completions")
    raw = checker.record.get("labels")
    if not isinstance(raw, list):
        raise checker.missing("labels", "missing" if raw is None else f"expected a list of booleans, got {type(raw).__name__}")
    if len(raw) != len(steps):
        raise checker.error("labels", f"expected one label per step: {len(steps)} steps, {len(raw)} labels")
    labels = []
    for i, value in enumerate(raw):
        if isinstance(value, bool) or value in (0, 1):
            labels.append(bool(value))
        else:
            raise checker.error(f"labels[{i}]", f"expected true/false (or 1/0), got {value!r}")
    return StepwiseExample(prompt, steps, labels)


def _string_list(checker: RowChecker, field: str) -> list[str]:
    raw = checker.record.get(field)
    if not isinstance(raw, list):
        raise checker.missing(field, "missing" if raw is None else f"expected a list of step strings, got {type(raw).__name__}")
    if not raw:
        raise checker.error(field, "a solution needs at least one step")
    for i, value in enumerate(raw):
        if not isinstance(value, str):
            raise checker.error(f"{field}[{i}]", f"expected a string, got {type(value).__name__}")
        if not value.strip():
            raise checker.error(f"{field}[{i}]", "empty step")
    return list(raw)


def split_steps(completion: str, separator: str) -> list[str]:
    """A completion's steps, the inverse of ``separator.join(steps)``; empty pieces (a
    separator at the very end, or two in a row) are not steps and stay with the step
    before them. An empty separator makes the whole completion one step."""
    if not separator:
        return [completion]
    steps: list[str] = []
    for piece in completion.split(separator):
        if piece.strip() or not steps:
            steps.append(piece)
        else:
            steps[-1] += separator + piece
    return steps


def step_scoring_positions(tokenizer, prompt: str, steps: list[str], separator: str, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt + separator.join(steps)`` (BOS added as the tokenizer adds it,
    cut at ``max_length``) and, per step that fits, the position of its scoring token: the
    token holding the step's last character, or the separator's after it. Tokenised as one
    text, so the ids are those the model reads when it scores a sampled completion."""
    ids, _, ends = step_token_spans(tokenizer, prompt, steps, separator, max_length)
    return ids, ends


def step_token_spans(tokenizer, prompt: str, steps: list[str], separator: str,
                     max_length: int) -> tuple[list[int], list[int], list[int]]:
    """As :func:`step_scoring_positions`, with the first token of each step as well:
    ``(ids, starts, ends)``; step s covers tokens ``starts[s] .. ends[s]`` (its separator
    included), so ``starts[s + 1] == ends[s] + 1``. The first step starts at the token
    holding its first character: a token that straddles the prompt and the step is the step's."""
    text, ends = prompt, []
    for i, step in enumerate(steps):
        text += step + (separator if i < len(steps) - 1 else "")
        ends.append(len(text) - 1)
    encoding = tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_length)
    ids = encoding["input_ids"]

    def token_at(char: int) -> int | None:
        # A character with no token of its own (folded into a neighbour by normalisation)
        # belongs to the next token that has one.
        token = encoding.char_to_token(char)
        while token is None and char < len(text) - 1:
            char += 1
            token = encoding.char_to_token(char)
        return token

    positions = []
    for end in ends:
        token = token_at(end)
        if token is None or token >= len(ids):
            break  # cut off by max_length: this step and the rest are not scored
        positions.append(token)
    first = token_at(len(prompt)) if positions else None
    starts = [first, *(p + 1 for p in positions[:-1])] if positions else []
    return ids, starts, positions


class StepwiseDataModule(TextDataModule):
    """Step-labelled solutions for process reward models (see ``data.stepwise``);
    ``batch_size`` counts solutions."""

    data_kind = "stepwise"
    fields = ("prompt", "completions", "labels")
    reference_cacheable = False

    def __init__(self, *args, step_separator: str = "\n", **kwargs):
        """
        Args:
            step_separator: written between steps (and split on when scoring a sampled
                completion); the score of a step is read at its last token, separator included
        """
        super().__init__(*args, **kwargs)
        self.step_separator = step_separator

    def parse(self, checker: RowChecker) -> StepwiseExample:
        return parse_stepwise(checker)

    def encode(self, example: StepwiseExample, tokenization: Tokenization) -> dict | None:
        ids, starts, positions = step_token_spans(tokenization.tokenizer, example.prompt, example.steps, self.step_separator,
                                                  self.max_length)
        if not positions:
            tokenization.drop("no step within max_length")
            return None
        return {"input_ids": ids, "step_starts": starts, "step_positions": positions,
                "step_labels": example.labels[: len(positions)]}

    def row_length(self, row: dict) -> int:
        return len(row["input_ids"])

    def collator(self):
        return StepwiseCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of)


class StepwiseCollator:
    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 1):
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict[str, Tensor]:
        batch = pad_sequences([([], row["input_ids"]) for row in rows], self.pad_token_id, self.pad_to_multiple_of)
        del batch["completion_mask"], batch["logp_index"]  # no log-probs: scores are read at step_index
        width = batch["input_ids"].shape[1]
        batch["step_index"] = torch.tensor([i * width + p for i, row in enumerate(rows) for p in row["step_positions"]])
        batch["step_start_index"] = torch.tensor([i * width + p for i, row in enumerate(rows) for p in row["step_starts"]])
        batch["step_labels"] = torch.tensor([float(label) for row in rows for label in row["step_labels"]])
        batch["step_row"] = torch.tensor([i for i, row in enumerate(rows) for _ in row["step_positions"]])
        return batch

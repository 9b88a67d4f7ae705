"""Unpaired data: single completions labelled desirable or undesirable (KTO's data).

Rows::

    {"prompt": ..., "completion": ..., "label": true}    # desirable
    {"prompt": ..., "completion": ..., "label": false}   # undesirable

Prompt and completion are strings, or message lists rendered with the chat template, as
for SFT data. ``label`` is a boolean; the strings "true"/"false" (any case, as a CSV file
writes them) are accepted too, and anything else is an error naming file, row and field.

Paired preference data converts by taking each chosen response as desirable and each
rejected one as undesirable: :func:`pairs_to_unpaired` for rows, or ``from_pairs: true``
on the data module to read a preference file directly.

A batch of B rows holds the B matched rows, then B *mismatched* rows, in one tensor so
that one forward pass scores both. Mismatched row i is prompt i with the completion of the
next row (i+1, i+2, ... mod B) whose prompt differs from prompt i: never one of prompt i's
own completions, which ``from_pairs`` puts side by side (chosen k, rejected k)::

    input_ids       [2B, T]  matched rows [0, B), mismatched rows [B, 2B)
    attention_mask  [2B, T]
    completion_mask [2B, T]
    logp_index      [n]      as for every other batch (see ``data.collate``)
    label           [B]      bool, True = desirable; its length is the number of matched rows
    mismatched      [B]      bool: mismatched row i pairs prompt i with another prompt's
                             completion; False when every row of the batch has prompt i
                             (row i is then repeated and left out of the estimate)
    train_label_counts [2]   (desirable, undesirable) rows in the training split, when known

The mismatched rows are what KTO estimates its reference point (a KL term) from. A
mismatched completion is cut, from the right, to fit ``max_length`` beside its new
prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_rlhf.data.collate import pad_sequences
from lightning_rlhf.data.formats import PreferenceExample, RowChecker, Text, parse_preference, parse_sft
from lightning_rlhf.data.modules import TextDataModule
from lightning_rlhf.data.tokenize import Tokenization

log = logging.getLogger(__name__)

_TRUE, _FALSE = "true", "false"


@dataclass
class UnpairedExample:
    prompt: Text
    completion: Text
    label: bool


def parse_label(checker: RowChecker, field: str = "label") -> bool:
    """A boolean, or the string "true"/"false" in any case; nothing else."""
    if field not in checker.record or checker.record[field] is None:
        raise checker.missing(field)
    value = checker.record[field]
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in (_TRUE, _FALSE):
        return value.strip().lower() == _TRUE
    raise checker.error(field, f"expected a boolean (true/false), got {value!r}")


def parse_unpaired(checker: RowChecker) -> UnpairedExample:
    if not checker.has("completion"):
        raise checker.error(None, f"an unpaired row needs 'prompt', 'completion' and 'label'; it has {checker.columns_present}")
    example = parse_sft(checker)  # the same prompt/completion checks as SFT rows
    return UnpairedExample(example.prompt, example.completion, parse_label(checker))


def pairs_to_unpaired(records: Iterable[dict], source: str = "<pairs>") -> list[dict]:
    """Preference rows -> unpaired rows: chosen is desirable, rejected is undesirable.

    Accepts every preference format the preference data module reads (explicit or
    implicit prompt, strings or message lists) and returns ``{"prompt", "completion",
    "label"}`` rows, two per pair, chosen first.
    """
    rows = []
    for row, record in enumerate(records, start=1):
        pair = parse_preference(RowChecker(source, row, record))
        rows.append({"prompt": pair.prompt, "completion": pair.chosen, "label": True})
        rows.append({"prompt": pair.prompt, "completion": pair.rejected, "label": False})
    return rows


class UnpairedDataModule(TextDataModule):
    """Completions labelled desirable/undesirable (see ``data.unpaired``); ``batch_size``
    counts matched rows (the batch also carries as many mismatched ones)."""

    data_kind = "unpaired"
    fields = ("prompt", "completion", "label", "chosen", "rejected")  # the last two with from_pairs
    # The mismatched rows pair each prompt with another row of the same batch: not a
    # function of the row, so there is nothing to cache per sequence.
    reference_cacheable = False

    def __init__(self, *args, from_pairs: bool = False, **kwargs):
        """
        Args:
            from_pairs: read a preference file (prompt/chosen/rejected) and train on each
                chosen response as desirable and each rejected one as undesirable
        """
        super().__init__(*args, **kwargs)
        self.from_pairs = from_pairs
        self.train_label_counts: tuple[int, int] | None = None

    def parse(self, checker: RowChecker) -> UnpairedExample | PreferenceExample:
        return parse_preference(checker) if self.from_pairs else parse_unpaired(checker)

    def encode(self, example: UnpairedExample | PreferenceExample, tokenization: Tokenization) -> dict | list[dict] | None:
        if isinstance(example, PreferenceExample):  # from_pairs: one pair gives two rows
            halves = [UnpairedExample(example.prompt, example.chosen, True), UnpairedExample(example.prompt, example.rejected, False)]
            encoded = [row for row in (self.encode(half, tokenization) for half in halves) if row is not None]
            return encoded or None
        tokens = tokenization.encode(example.prompt, example.completion)
        if tokens is None:
            return None
        return {"prompt_ids": tokens.prompt_ids, "completion_ids": tokens.completion_ids, "label": example.label}

    def load(self, path: str) -> list[dict]:
        # With from_pairs a source row encodes to two rows: flatten them.
        return [row for item in super().load(path) for row in (item if isinstance(item, list) else [item])]

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if not self.train_rows:  # read when the module connects its tokenizer (see connect)
            return
        desirable = sum(row["label"] for row in self.train_rows)
        self.train_label_counts = (desirable, len(self.train_rows) - desirable)
        log.info("unpaired training data: %d desirable, %d undesirable rows", *self.train_label_counts)

    def collator(self):
        return UnpairedCollator(self.tokenizer.pad_token_id, self.max_length, self.pad_to_multiple_of, self.train_label_counts)


class UnpairedCollator:
    """Matched rows, then mismatched rows (prompt i, completion i+1 mod B), in one tensor."""

    def __init__(
        self,
        pad_token_id: int,
        max_length: int,
        pad_to_multiple_of: int = 1,
        train_label_counts: tuple[int, int] | None = None,
    ):
        self.pad_token_id, self.max_length, self.pad_to_multiple_of = pad_token_id, max_length, pad_to_multiple_of
        self.train_label_counts = train_label_counts

    def __call__(self, rows: list[dict]) -> dict[str, Tensor]:
        matched = [(r["prompt_ids"], r["completion_ids"]) for r in rows]
        mismatched, found = [], []
        for i, row in enumerate(rows):
            partner = other_prompts_row(rows, i)
            found.append(partner is not None)
            completion = rows[i if partner is None else partner]["completion_ids"]
            # A truncated prompt keeps at least one completion token free (see Tokenization).
            mismatched.append((row["prompt_ids"], completion[: self.max_length - len(row["prompt_ids"])]))
        batch = pad_sequences(matched + mismatched, self.pad_token_id, self.pad_to_multiple_of)
        batch["label"] = torch.tensor([r["label"] for r in rows], dtype=torch.bool)
        batch["mismatched"] = torch.tensor(found, dtype=torch.bool)
        if self.train_label_counts is not None:
            batch["train_label_counts"] = torch.tensor(self.train_label_counts, dtype=torch.long)
        return batch


def other_prompts_row(rows: list[dict], i: int) -> int | None:
    """The first row after ``i`` (cyclically) whose prompt differs from row i's, or None."""
    for step in range(1, len(rows)):
        j = (i + step) % len(rows)
        if rows[j]["prompt_ids"] != rows[i]["prompt_ids"]:
            return j
    return None

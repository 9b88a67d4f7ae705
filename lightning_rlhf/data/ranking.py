"""Ranked data: K completions of one prompt, best first (InstructGPT's K-wise comparisons).

Rows, in either form (K may differ from row to row, K >= 2)::

    {"prompt": ..., "completions": [c_1, ..., c_K]}                  # best first
    {"prompt": ..., "completions": [c_1, ..., c_K], "scores": [...]}  # higher is better

Prompt and completions are strings, or message lists (a completion is then a list of
assistant messages) rendered with the chat template, as for preference data.

Ties (equal scores) share a rank: tied completions are kept and trained on against the
others, but no pair is formed between them. A row whose completions all tie carries no
preference and is dropped (and counted in the log).

A batch of B prompts holds every completion of each prompt, prompt after prompt, and
within a prompt best first::

    input_ids       [N, T]  N = K_1 + ... + K_B rows, right-padded
    attention_mask  [N, T]
    completion_mask [N, T]  the completion tokens (EOS included)
    logp_index      [n]     as for every other batch (see ``data.collate``)
    group_index     [N]     which prompt of the batch a row belongs to, 0..B-1
    rank            [N]     0 = best within its prompt; equal for ties

:func:`ranked_pair_mask` turns ``group_index`` and ``rank`` into the pairs they imply.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_rlhf.data.collate import pad_sequences
from lightning_rlhf.data.formats import RowChecker, Text, _check_same_kind
from lightning_rlhf.data.modules import TextDataModule
from lightning_rlhf.data.tokenize import Tokenization


@dataclass
class RankingExample:
    prompt: Text
    completions: list[Text]
    ranks: list[int]
    """0 = best; tied completions share a rank"""


def parse_ranking(checker: RowChecker) -> RankingExample:
    prompt = checker.text("prompt")
    raw = checker.record.get("completions")
    if not isinstance(raw, list):
        problem = "missing" if raw is None else f"expected a list of completions, got {type(raw).__name__}"
        raise checker.missing("completions", problem)
    if len(raw) < 2:
        raise checker.error("completions", f"a ranking needs at least 2 completions, got {len(raw)}")
    completions: list[Text] = []
    for i, value in enumerate(raw):
        field = f"completions[{i}]"
        if isinstance(value, str):
            completions.append(value)
        elif isinstance(value, list):
            completions.append(checker.messages(field, value))
        else:
            raise checker.error(field, f"expected a string or a list of messages, got {type(value).__name__}")
        _check_same_kind(checker, prompt, completions[-1], field)
    if any(isinstance(c, list) != isinstance(completions[0], list) for c in completions):
        raise checker.error("completions", "completions must all be strings or all be message lists")
    if checker.has("scores"):
        ranks = dense_ranks(_scores(checker, len(completions)))
    else:
        ranks = list(range(len(completions)))
    return RankingExample(prompt=prompt, completions=completions, ranks=ranks)


def _scores(checker: RowChecker, count: int) -> list[float]:
    raw = checker.record["scores"]
    if not isinstance(raw, list) or len(raw) != count:
        got = f"{len(raw)} scores" if isinstance(raw, list) else type(raw).__name__
        raise checker.error("scores", f"expected a list of {count} numbers (one per completion), got {got}")
    # Reuse the number checks (finite, not a boolean) one element at a time.
    return [RowChecker(checker.source, checker.row, {f"scores[{i}]": v}).number(f"scores[{i}]") for i, v in enumerate(raw)]


def dense_ranks(scores: list[float]) -> list[int]:
    """Rank 0 for the highest score, equal scores share a rank: [0.2, 0.9, 0.2] -> [1, 0, 1]."""
    distinct = sorted(set(scores), reverse=True)
    return [distinct.index(s) for s in scores]


class RankingDataModule(TextDataModule):
    """K ranked completions per prompt (see ``data.ranking``); ``batch_size`` counts prompts."""

    data_kind = "ranking"
    fields = ("prompt", "completions", "scores")

    def parse(self, checker: RowChecker) -> RankingExample:
        return parse_ranking(checker)

    def encode(self, example: RankingExample, tokenization: Tokenization) -> dict | None:
        if len(set(example.ranks)) < 2:
            tokenization.drop("all completions tied")
            return None
        rendered = [tokenization.render(example.prompt, c) for c in example.completions]
        if any(not text.strip() for _, text in rendered):
            tokenization.drop("empty completion")
            return None
        prompt_ids = tokenization.prompt_ids(rendered[0][0])
        encoded = [tokenization.truncate(prompt_ids, tokenization.completion_ids(text)) for _, text in rendered]
        if any(e is None for e in encoded):
            tokenization.drop("completion empty after truncation")
            return None
        # Best first, so a batch reads in rank order; the sort is stable for ties.
        order = sorted(range(len(encoded)), key=lambda i: example.ranks[i])
        return {
            "prompt_ids": encoded[0].prompt_ids,
            "completion_ids": [encoded[i].completion_ids for i in order],
            "ranks": [example.ranks[i] for i in order],
        }

    def collator(self):
        return RankingCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of)


class RankingCollator:
    """Every completion of every prompt in one tensor: one forward pass for all of them."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 1):
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict[str, Tensor]:
        sequences, group_index, rank = [], [], []
        for group, row in enumerate(rows):
            for completion_ids, r in zip(row["completion_ids"], row["ranks"], strict=True):
                sequences.append((row["prompt_ids"], completion_ids))
                group_index.append(group)
                rank.append(r)
        batch = pad_sequences(sequences, self.pad_token_id, self.pad_to_multiple_of)
        batch["group_index"] = torch.tensor(group_index, dtype=torch.long)
        batch["rank"] = torch.tensor(rank, dtype=torch.long)
        return batch


def ranked_pair_mask(group_index: Tensor, rank: Tensor) -> Tensor:
    """``[N, N]`` bool: ``[i, j]`` is set when row i is ranked above row j for the same
    prompt. A prompt with K untied completions gives K*(K-1)/2 pairs.

    A dense mask rather than a list of index pairs: it needs no host-device round trip
    (``nonzero`` would), and N (completions per batch) is small.
    """
    same_prompt = group_index.unsqueeze(1) == group_index.unsqueeze(0)
    return same_prompt & (rank.unsqueeze(1) < rank.unsqueeze(0))

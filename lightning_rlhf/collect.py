"""What ``lightning-rlhf label`` writes (the command is ``commands.label``): K completions per
prompt from a policy, scored by a reward source, as preference data the data modules read.

The reward source plays the annotator: ``--reward gold`` is the toy world's "human"; a
reward-model directory, or an LLM judge (``--judge``: each completion scored by its mean
probability, read from the judge, of beating the prompt's other completions; see
``rewards.judge``), makes this RLAIF. Three output shapes:

- ``best-worst``: one pair per prompt, the highest-scored completion against the
  lowest, ``{"prompt", "chosen", "rejected", "margin"}`` (``PreferenceDataModule``);
- ``all-pairs``: every pair of completions whose scores differ by more than
  ``min_gap`` (K(K-1)/2 at most), same fields;
- ``ranking``: ``{"prompt", "completions", "scores"}`` (``RankingDataModule``).

``margin`` is the score difference chosen - rejected (> 0). A prompt whose K samples
all score the same carries no preference and is skipped; so is a best-worst prompt
whose spread is not above ``min_gap``. Both are counted in the summary.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

MODES = ("best-worst", "all-pairs", "ranking")


@dataclass
class CollectionSummary:
    prompts: int = 0
    rows: int = 0
    skipped_ties: int = 0
    """prompts whose K samples all scored the same"""
    skipped_small_gap: int = 0
    """prompts with a spread, but none above ``min_gap``"""
    mean_score: float = 0.0
    mean_margin: float = 0.0
    extra: dict = field(default_factory=dict)


def preference_rows(
    prompts: Sequence[str],
    completions: Sequence[Sequence[str]],
    scores: Sequence[Sequence[float]],
    mode: str = "best-worst",
    min_gap: float = 0.0,
) -> tuple[list[dict], CollectionSummary]:
    """Rows of the chosen ``mode`` from K scored completions per prompt (pure: no model).

    Among equal scores the earlier sample is taken as best/worst, so the output does not
    depend on anything but the inputs."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if min_gap < 0:
        raise ValueError(f"min_gap must be >= 0, got {min_gap}")
    rows: list[dict] = []
    summary = CollectionSummary(prompts=len(prompts))
    margins: list[float] = []
    all_scores: list[float] = []
    for prompt, texts, values in zip(prompts, completions, scores, strict=True):
        values = [float(v) for v in values]
        all_scores.extend(values)
        if max(values) == min(values):
            summary.skipped_ties += 1
            continue
        if mode == "ranking":
            rows.append({"prompt": prompt, "completions": list(texts), "scores": values})
            continue
        if mode == "best-worst":
            best = max(range(len(values)), key=lambda i: (values[i], -i))
            worst = min(range(len(values)), key=lambda i: (values[i], i))
            candidates = [(best, worst)] if values[best] - values[worst] > min_gap else []
        else:
            candidates = [
                (i, j) if values[i] > values[j] else (j, i)
                for i, j in itertools.combinations(range(len(values)), 2)
                if abs(values[i] - values[j]) > min_gap
            ]
        if not candidates:
            summary.skipped_small_gap += 1
        for chosen, rejected in candidates:
            margin = values[chosen] - values[rejected]
            margins.append(margin)
            rows.append({"prompt": prompt, "chosen": texts[chosen], "rejected": texts[rejected], "margin": margin})
    summary.rows = len(rows)
    summary.mean_score = sum(all_scores) / len(all_scores) if all_scores else 0.0
    summary.mean_margin = sum(margins) / len(margins) if margins else 0.0
    return rows, summary

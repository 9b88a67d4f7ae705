"""The toy world's gold reward: how positive a completion reads to VADER.

VADER is a lexicon-and-rules sentiment model: deterministic, fast on a CPU, and needing
no download, so it can stand where the DPO paper's sentiment experiment used a trained
classifier. Its compound score runs from -1 (very negative) to +1 (very positive).

Only the completion is scored: the prompts are neutral openings, and the policy is
judged on what it wrote, not on what it was given.
"""

from __future__ import annotations

from functools import lru_cache

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer


@lru_cache(maxsize=1)
def _analyzer() -> SentimentIntensityAnalyzer:
    # Loading the lexicon takes a few hundred milliseconds; do it once per process.
    return SentimentIntensityAnalyzer()


def sentiment_score(text: str) -> float:
    """VADER's compound score of `text`, in [-1, 1]; 0 for text with no sentiment."""
    return float(_analyzer().polarity_scores(text)["compound"])


def gold_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """The gold reward of each (prompt, completion): the sentiment of the completion.

    `prompts` is taken so that this has the shape of any reward function, and checked
    against `completions` so that a misaligned batch fails loudly."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    return [sentiment_score(completion) for completion in completions]

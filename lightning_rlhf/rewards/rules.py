"""Rule rewards: plain functions of the text, named in a recipe through ``FunctionReward``
(``function: lightning_rlhf.rewards.rules.letter_e_reward``)."""

from __future__ import annotations


def letter_e_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """How many letters "e" a completion has: a reward any model, even an untrained tiny
    one, moves quickly, for the tiny recipes of online plugins and their tests."""
    return [float(c.count("e")) for c in completions]


def contains_answer(prompts: list[str], completions: list[str], answer: list) -> list[float]:
    """1 when the completion contains the prompt row's ``answer`` column (case and surrounding
    spaces ignored), else 0; a row without an answer scores 0. A checkable reward that reads
    a column of the prompt file."""
    return [float(a is not None and str(a).strip().lower() in c.lower()) for c, a in zip(completions, answer, strict=True)]

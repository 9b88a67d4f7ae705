"""Rule rewards: plain functions of the text, named in a recipe through ``FunctionReward``
(``function: lightning_rlhf.rewards.rules.letter_e_reward``)."""

from __future__ import annotations


def letter_e_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """How many letters "e" a completion has: a reward any model, even an untrained tiny
    one, moves quickly, for the tiny recipes of online plugins and their tests."""
    return [float(c.count("e")) for c in completions]

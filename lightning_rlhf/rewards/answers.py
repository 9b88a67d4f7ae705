"""Checkable rewards: the final answer of a completion against the prompt row's ``answer``.

Named in a recipe through ``FunctionReward`` (``function:
lightning_rlhf.rewards.answers.exact_answer``); the prompt file carries the right answer in
an ``answer`` column. The reference may be a bare number (``"22"``) or a worked solution
ending in GSM8K's ``#### 22``; numbers compare as numbers (``1,000`` = ``1000`` = ``1000.0``).

A completion's final answer is the last of: ``Answer: N`` (the toy world's and the recipes'
format), ``#### N`` (GSM8K's) or ``\\boxed{N}`` (the MATH convention many instruct models
use). A completion with none of them has no answer and scores 0, so the reward cannot be
earned by a number that happens to appear in the working.
"""

from __future__ import annotations

import re
from fractions import Fraction

NUMBER = r"-?\$?\s*[\d,]*\.?\d+"
FINAL_ANSWER = re.compile(rf"(?:Answer:|####)\s*({NUMBER})|\\boxed\{{\s*({NUMBER})\s*\}}", re.IGNORECASE)


def parse_number(text: str) -> Fraction | None:
    """``"1,000"``, ``"$12"``, ``"3.50"`` -> an exact number; anything else -> None."""
    cleaned = text.replace(",", "").replace("$", "").strip()
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def final_answer(text: str) -> Fraction | None:
    """The last final-answer mark's number in ``text``, or None when there is none."""
    matches = FINAL_ANSWER.findall(text)
    if not matches:
        return None
    plain, boxed = matches[-1]
    return parse_number(plain or boxed)


def reference_answer(answer) -> Fraction | None:
    """The right answer from an ``answer`` cell: a number, or a text ending in ``#### N``."""
    if answer is None:
        return None
    if isinstance(answer, (int, float)):
        return Fraction(answer)
    text = str(answer)
    return final_answer(text) if "####" in text else parse_number(text)


def exact_answer(prompts: list[str], completions: list[str], answer: list) -> list[float]:
    """1 when a completion's final answer equals the row's ``answer``, else 0. A row with
    no usable answer is left unscored (None), which the online plugins leave out."""
    scores: list[float | None] = []
    for completion, cell in zip(completions, answer, strict=True):
        reference = reference_answer(cell)
        if reference is None:
            scores.append(None)
            continue
        scores.append(float(final_answer(completion) == reference))
    return scores


def answer_format(prompts: list[str], completions: list[str]) -> list[float]:
    """1 when a completion ends with a final-answer mark (``Answer: N``, ``#### N`` or
    ``\\boxed{N}``) and nothing after it but spaces and a full stop, else 0: the format
    reward, usually weighted below the exact one."""
    scores = []
    for completion in completions:
        matches = list(FINAL_ANSWER.finditer(completion))
        scores.append(float(bool(matches) and completion[matches[-1].end():].strip(" .\n") == ""))
    return scores

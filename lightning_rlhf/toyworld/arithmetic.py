"""The checkable toy world: sums of small numbers, worked step by step, with one right answer.

A prompt asks for a sum; the answer is written as running totals, one step each, then an
answer line::

    What is 4+7+2+9?  ->   4+7=11. 11+2=13. 13+9=22. Answer: 22

The corpus the base model learns from is written by a careless hand: each step's total is
off (by 1 or 2, up or down) with probability ``STEP_ERROR_RATE``, and the steps after it
carry the wrong total on, so a worked answer with three steps is right only about half the
time. A model that learns the corpus samples right and wrong answers in the same
proportions; a reward that checks the answer (``lightning_rlhf.rewards.answers``) can then
teach it to add. Every step can be checked too (:func:`step_labels`): the world serves step
feedback as well as outcome feedback.

Prompt rows carry the right answer in an ``answer`` column, the layout a GSM8K-style file
(question, answer) maps to. Prompts are split into train and held-out by a stable hash, so
evaluation never sees a training prompt.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "heldout")
HELDOUT_EVERY = 10
OPERANDS = range(1, 10)  # single digits
MIN_TERMS, MAX_TERMS = 3, 5
STEP_ERROR_RATE = 0.2
ERRORS = (-2, -1, 1, 2)
DIRECT_FRACTION = 0.15  # pretraining texts that give the answer without working
STEP = re.compile(r"(\d+)\+(\d+)=(\d+)")


@dataclass(frozen=True)
class Problem:
    terms: tuple[int, ...]

    @property
    def prompt(self) -> str:
        return f"What is {'+'.join(map(str, self.terms))}?"

    @property
    def answer(self) -> int:
        return sum(self.terms)


def worked_steps(problem: Problem, rng: random.Random, error_rate: float = STEP_ERROR_RATE) -> list[tuple[int, int, int]]:
    """The steps ``(total so far, next term, written total)`` of a worked answer whose
    written total is off with probability ``error_rate``; later steps carry it on."""
    steps, total = [], problem.terms[0]
    for term in problem.terms[1:]:
        written = total + term
        if rng.random() < error_rate:
            written = max(0, written + rng.choice(ERRORS))
        steps.append((total, term, written))
        total = written
    return steps


def format_steps(steps: list[tuple[int, int, int]]) -> str:
    """`` 4+7=11. 11+2=13. Answer: 13`` (a leading space: prompt + completion is the text)."""
    worked = " ".join(f"{a}+{b}={c}." for a, b, c in steps)
    return f" {worked} Answer: {steps[-1][2]}"


def step_labels(problem: Problem, completion: str) -> list[bool]:
    """Whether each written step ``a+b=c`` is right: ``a`` is the total so far (the first
    term, then the previous step's written total), ``b`` the next term, ``c`` their sum.
    A step is judged on its own, so a step after a mistake can be right."""
    labels, total = [], problem.terms[0]
    terms = iter(problem.terms[1:])
    for match in STEP.finditer(completion):
        a, b, c = map(int, match.groups())
        labels.append(a == total and b == next(terms, None) and c == a + b)
        total = c
    return labels


STEP_SEPARATOR = "."  # a worked answer's steps end with "." (the answer line is the last step)
ANSWER_STEP = re.compile(r"\s*Answer:\s*(-?\d+)\.?\s*")


def label_steps(problem: Problem, steps: list[str]) -> list[bool]:
    """Whether each step of a worked answer, split on :data:`STEP_SEPARATOR`, is right on its
    own (as :func:`step_labels` judges): a ``a+b=c`` step adds the total so far and the next
    term correctly; the answer step states the total so far after every term was added;
    anything else is wrong."""
    labels, total, used = [], problem.terms[0], 1
    for step in steps:
        addition = STEP.fullmatch(step.strip())
        answer = ANSWER_STEP.fullmatch(step)
        if addition:
            a, b, c = map(int, addition.groups())
            expected = problem.terms[used] if used < len(problem.terms) else None
            labels.append(a == total and b == expected and c == a + b)
            total, used = c, used + 1
        elif answer:
            labels.append(int(answer.group(1)) == total and used == len(problem.terms))
        else:
            labels.append(False)
    return labels


def write_step_labelled(path: str | Path, n: int, split: str = "train", seed: int = 0,
                        error_rate: float = STEP_ERROR_RATE) -> Path:
    """``{"prompt", "completions": [steps], "labels": [bools]}`` rows (``data.stepwise``):
    careless worked answers as the corpus writes them, each step labelled by
    :func:`label_steps`, and an ``answer`` column. With ``data.stepwise``'s
    ``step_separator: "."`` the model reads exactly the worked answer's text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"arithmetic-steps-{split}-{seed}")
    with path.open("w", encoding="utf-8") as file:
        for problem in problems(n, split, seed + 7919):
            steps = format_steps(worked_steps(problem, rng, error_rate)).split(STEP_SEPARATOR)
            row = {"prompt": problem.prompt, "completions": steps, "labels": label_steps(problem, steps),
                   "answer": str(problem.answer)}
            file.write(json.dumps(row) + "\n")
    return path


def parse_problem(prompt: str) -> Problem:
    """The problem a prompt ``What is 4+7+2?`` asks."""
    match = re.search(r"What is ([\d+]+)\?", prompt)
    if match is None:
        raise ValueError(f"not an arithmetic prompt: {prompt!r}")
    return Problem(tuple(int(t) for t in match.group(1).split("+")))


def split_of(problem: Problem) -> str:
    """Which split a problem belongs to, from a stable hash of its prompt."""
    digest = hashlib.sha256(problem.prompt.encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % HELDOUT_EVERY == 0 else "train"


def random_problem(rng: random.Random, split: str = "train") -> Problem:
    while True:
        problem = Problem(tuple(rng.choice(OPERANDS) for _ in range(rng.randint(MIN_TERMS, MAX_TERMS))))
        if split_of(problem) == split:
            return problem


def iter_sft_pairs(seed: int = 0) -> Iterator[tuple[str, str]]:
    """Endless (prompt, worked answer) pairs from the train split, careless as the corpus."""
    rng = random.Random(f"arithmetic-sft-{seed}")
    while True:
        problem = random_problem(rng)
        yield problem.prompt, format_steps(worked_steps(problem, rng))


def sft_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    pairs = iter_sft_pairs(seed)
    return [next(pairs) for _ in range(n)]


def pretraining_texts(n: int, seed: int = 0) -> list[str]:
    """`n` texts: mostly worked answers, some that state the answer without working (so
    the base model also knows a shape the fine-tuning steers it away from)."""
    rng = random.Random(f"arithmetic-pretrain-{seed}")
    texts = []
    for _ in range(n):
        problem = random_problem(rng)
        if rng.random() < DIRECT_FRACTION:
            guess = problem.answer + (rng.choice(ERRORS) if rng.random() < 0.5 else 0)
            texts.append(f"{problem.prompt} Answer: {guess}")
        else:
            texts.append(problem.prompt + format_steps(worked_steps(problem, rng)))
    return texts


def problems(n: int, split: str = "train", seed: int = 0) -> list[Problem]:
    """`n` distinct problems from one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"arithmetic-prompts-{split}-{seed}")
    chosen: dict[Problem, None] = {}
    while len(chosen) < n:
        chosen[random_problem(rng, split)] = None
    return list(chosen)


def write_prompts(path: str | Path, n: int, split: str = "train", seed: int = 0) -> Path:
    """``{"prompt": "What is 4+7+2?", "answer": "13"}`` rows of one split."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        for problem in problems(n, split, seed):
            file.write(json.dumps({"prompt": problem.prompt, "answer": str(problem.answer)}) + "\n")
    return path

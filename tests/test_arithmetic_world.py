"""The checkable toy world: its problems, its careless corpus, the step checker, the answer
rewards, and the models built at a tiny size (the full-size build is measured by hand)."""

from __future__ import annotations

import json
import random
from dataclasses import asdict

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_rlhf.models.builtin import builtin_names
from lightning_rlhf.rewards.answers import answer_format, exact_answer, final_answer, reference_answer
from lightning_rlhf.toyworld import arithmetic
from lightning_rlhf.toyworld.arithmetic import Problem, format_steps, step_labels, worked_steps
from lightning_rlhf.toyworld.models import ARITHMETIC, WorldConfig, build_world


def test_a_worked_answer_by_hand():
    problem = Problem((4, 7, 2, 9))
    assert problem.prompt == "What is 4+7+2+9?" and problem.answer == 22
    assert format_steps(worked_steps(problem, random.Random(0), error_rate=0.0)) == " 4+7=11. 11+2=13. 13+9=22. Answer: 22"


def test_a_careless_step_is_carried_on_and_each_step_is_judged_on_its_own():
    problem = Problem((4, 7, 2))
    # Step 1 is off by one; step 2 adds correctly to the wrong total: the answer is wrong.
    completion = " 4+7=12. 12+2=14. Answer: 14"
    assert step_labels(problem, completion) == [False, True]
    assert exact_answer([problem.prompt], [completion], [str(problem.answer)]) == [0.0]
    assert step_labels(problem, " 4+7=11. 11+3=14. Answer: 14") == [True, False]  # the wrong term
    assert step_labels(problem, " 4+7=11. 11+2=13. 13+1=14. Answer: 14") == [True, True, False]  # one step too many


def test_the_corpus_is_wrong_at_the_stated_rate():
    """Each step is off with probability 0.2: over 20000 steps the share is within 0.01."""
    rng = random.Random(0)
    steps = [step for _ in range(6000) for step in worked_steps(arithmetic.random_problem(rng), rng)]
    wrong = sum(a + b != c for a, b, c in steps) / len(steps)
    assert len(steps) > 12_000 and abs(wrong - arithmetic.STEP_ERROR_RATE) < 0.01


def test_splits_are_disjoint_and_rows_carry_the_answer(tmp_path):
    train = {p.prompt for p in arithmetic.problems(500, "train")}
    heldout = arithmetic.problems(100, "heldout")
    assert not train & {p.prompt for p in heldout}
    assert all(arithmetic.split_of(p) == "heldout" for p in heldout)
    path = arithmetic.write_prompts(tmp_path / "p.jsonl", 5, "heldout")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {"prompt": heldout[0].prompt, "answer": str(heldout[0].answer)}
    texts = arithmetic.pretraining_texts(200, seed=0)
    assert all(arithmetic.split_of(Problem(tuple(map(int, t.split("?")[0][8:].split("+"))))) == "train" for t in texts)


@pytest.mark.parametrize(("text", "expected"), [
    (" 4+7=11. Answer: 11", 11), ("so #### 1,000", 1000), (r"The total is \boxed{42}.", 42),
    ("Answer: 3. Wait, Answer: 5", 5), ("It is 11.", None), ("Answer: 2.50", 2.5), ("Answer: $12", 12),
])
def test_final_answer_marks(text, expected):
    assert final_answer(text) == (None if expected is None else pytest.approx(expected))


def test_the_answer_rewards():
    completions = [" 1+2=3. Answer: 3", " 1+2=4. Answer: 4", "3", "Answer: 3 and then more"]
    assert exact_answer([""] * 4, completions, ["3"] * 4) == [1.0, 0.0, 0.0, 1.0]
    # A GSM8K answer column (worked solution ending in "#### N"), and a row without an answer.
    assert exact_answer(["", ""], ["#### 72", "Answer: 72"], ["48/2 = 24 ... #### 72", None]) == [1.0, None]
    assert reference_answer(7) == 7 and reference_answer("1,234") == 1234
    assert answer_format([""] * 4, completions) == [1.0, 1.0, 0.0, 0.0]


TINY = WorldConfig(**{**asdict(ARITHMETIC), "tokenizer_texts": 500, "vocab_size": 300, "hidden_size": 32, "num_layers": 2,
                      "num_heads": 2, "intermediate_size": 64, "pretrain_texts": 400, "pretrain_row_length": 32,
                      "pretrain_steps": 3, "pretrain_batch_size": 8, "sft_pairs": 100, "sft_steps": 3, "sft_batch_size": 8})


def test_a_tiny_build_loads_and_answers_in_the_format_s_tokens(tmp_path):
    _, sft = build_world(tmp_path / "world", TINY, arithmetic)
    tokenizer = AutoTokenizer.from_pretrained(sft)
    model = AutoModelForCausalLM.from_pretrained(sft)
    text = "What is 4+7+2? 4+7=11. 11+2=13. Answer: 13"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    assert len(tokenizer(text)["input_ids"]) < 30  # numbers are single tokens
    assert model.generation_config.max_new_tokens == ARITHMETIC.max_new_tokens
    assert json.loads((sft / "toyworld.json").read_text())["config"]["vocab_size"] == 300


def test_the_world_is_a_builtin_model():
    assert {"arithmetic", "arithmetic-pretrained"} <= set(builtin_names())

"""A reward sees the prompt rows' other columns: a reference answer, metadata."""

import asyncio
import json

import pytest

from lightning_rlhf.cli import main
from lightning_rlhf.data import PromptDataModule
from lightning_rlhf.rewards import FunctionReward
from lightning_rlhf.rewards.composite import WeightedSum

ANSWERS = "recipes/data/tiny_prompts_answers.jsonl"
SEEN: list[tuple[list[str], dict]] = []


def recording_reward(prompts, completions, **columns):
    """Keeps what it was given; scores each completion by its length."""
    SEEN.append((list(prompts), columns))
    return [float(len(c)) for c in completions]


def answer_reward(prompts, completions, answer):
    return [float(a == c) for a, c in zip(answer, completions)]


async def async_answer_reward(prompts, completions, answer):
    await asyncio.sleep(0)
    return [float(a == c) for a, c in zip(answer, completions)]


def test_a_function_gets_the_columns_it_names():
    columns = [{"answer": "4", "source": "a"}, {"answer": "7", "source": "b"}]
    for function in ("answer_reward", "async_answer_reward"):
        reward = FunctionReward(f"test_reward_columns.{function}")
        assert reward(["2+2?", "3+4?"], ["4", "8"], columns).tolist() == [1.0, 0.0]
    SEEN.clear()
    FunctionReward("test_reward_columns.recording_reward")(["p", "q"], ["a", "bb"], columns)
    assert SEEN[-1][1] == {"answer": ["4", "7"], "source": ["a", "b"]}  # **columns: every column
    # a source that reads no column is given none; a weighted sum hands them on
    total = WeightedSum([FunctionReward("test_reward_columns.answer_reward"), FunctionReward("lightning_rlhf.rewards.rules.letter_e_reward")], [2.0, 1.0])
    assert total(["p", "q"], ["4", "e"], columns).tolist() == [2.0, 1.0]


def test_a_function_needing_a_column_the_rows_lack_says_so():
    with pytest.raises(ValueError, match=r"needs the column\(s\) \['answer'\], which the prompt rows do not have \(they have \['source'\]\)"):
        FunctionReward("test_reward_columns.answer_reward")(["p"], ["a"], [{"source": "x"}])
    with pytest.raises(ValueError, match="2 prompts but 1 rows of columns"):
        FunctionReward("test_reward_columns.answer_reward")(["p", "q"], ["a", "b"], [{"answer": "a"}])


def test_prompt_batches_carry_the_other_columns(tiny_tokenizer):
    data = PromptDataModule(path=ANSWERS, batch_size=4)
    data.tokenizer = tiny_tokenizer
    data.setup("fit")
    batch = data.collator()(data.train_rows[:2])
    rows = [json.loads(line) for line in open(ANSWERS)][:2]
    assert batch["columns"] == [{"answer": r["answer"], "source": r["source"]} for r in rows]


def test_ppo_recipe_whose_reward_reads_the_answer_column(tmp_path):
    """`lightning-rlhf fit` of the shipped recipe, one rollout, its reward swapped for one that
    records what it was given: every scored completion came with its own row's answer."""
    SEEN.clear()
    code = main(["fit", "--config", "recipes/ppo/tiny-answer-column.yaml", "--trainer.max_epochs", "1",
                 "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                 "--trainer.default_root_dir", str(tmp_path), "--model.init_args.export_dir", "null",
                 "--model.init_args.reward.init_args.function", "test_reward_columns.recording_reward"])
    assert code == 0
    # a conversational prompt reaches the reward rendered, carrying its messages (ChatPrompt)
    answers = {json.dumps(row["prompt"]): row["answer"] for row in map(json.loads, open(ANSWERS))}
    prompts, columns = SEEN[0]
    assert len(prompts) == 18 and set(columns) == {"answer", "source"}
    assert columns["answer"] == [answers[json.dumps(getattr(p, "messages", p))] for p in prompts]
    assert len(set(columns["answer"])) > 1


def test_the_shipped_answer_column_recipe_trains(tmp_path):
    code = main(["fit", "--config", "recipes/ppo/tiny-answer-column.yaml", "--trainer.max_epochs", "1",
                 "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                 "--trainer.default_root_dir", str(tmp_path), "--model.init_args.export_dir", "null"])
    assert code == 0


def test_a_gsm8k_layout_file_reaches_the_exact_answer_reward(tmp_path, tiny_tokenizer):
    """{"question", "answer": "... #### 72"} rows: `columns` maps the question to the prompt,
    `instruction` makes it a user message for the chat template, and the answer column
    reaches the reward, which reads GSM8K's "#### N"."""
    from lightning_rlhf.data.prompts import ChatPrompt

    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps({"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
                                "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nAltogether 72.\n#### 72"}) + "\n")
    data = PromptDataModule(path=str(path), columns={"prompt": "question"}, instruction='End with "Answer: N".', max_length=256)
    data.tokenizer = tiny_tokenizer
    row = data.load(str(path))[0]
    assert isinstance(row["prompt"], ChatPrompt)
    assert row["prompt"].messages == [{"role": "user", "content": "Natalia sold 48 clips in April and half as many in May. "
                                       "How many in all?\n\nEnd with \"Answer: N\"."}]
    assert set(row["columns"]) == {"answer"}
    reward = FunctionReward("lightning_rlhf.rewards.answers.exact_answer")
    assert reward([row["prompt"]] * 2, ["48 + 24 = 72\nAnswer: 72", "Answer: 70"], [row["columns"]] * 2).tolist() == [1.0, 0.0]

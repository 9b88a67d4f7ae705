"""The public preference layouts load as they are, each to the same token ids as the
equivalent explicit-prompt row; a column map reads files whose columns are named otherwise."""

import json

import pytest

from lightning_rlhf.cli import main
from lightning_rlhf.data import DataError, PreferenceDataModule, SFTDataModule


def load(tokenizer, tmp_path, rows, name="rows.jsonl", **kwargs) -> list[dict]:
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    module = PreferenceDataModule(path=str(path), **kwargs)
    module.tokenizer = tokenizer
    module.setup("fit")
    return module.train_rows


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def test_anthropic_hh_layout_implicit_prompt(tmp_path, tiny_tokenizer):
    """Whole dialogues in chosen/rejected; the shared beginning is the prompt."""
    hh = {"chosen": "\n\nHuman: How was the film?\n\nAssistant: Lovely, I laughed.",
          "rejected": "\n\nHuman: How was the film?\n\nAssistant: Dull."}
    explicit = {"prompt": "\n\nHuman: How was the film?\n\nAssistant: ", "chosen": "Lovely, I laughed.", "rejected": "Dull."}
    assert load(tiny_tokenizer, tmp_path, [hh], "hh.jsonl") == load(tiny_tokenizer, tmp_path, [explicit])


ULTRAFEEDBACK = {
    "prompt": "How was the film?",
    "prompt_id": "3f2a",
    "chosen": [user("How was the film?"), assistant("Lovely, I laughed.")],
    "rejected": [user("How was the film?"), assistant("Dull.")],
    "messages": [user("How was the film?"), assistant("Lovely, I laughed.")],
    "score_chosen": 8.0,
    "score_rejected": 3.0,
}


def test_ultrafeedback_layout_conversations_that_repeat_the_prompt(tmp_path, tiny_tokenizer):
    explicit = {"prompt": [user("How was the film?")], "chosen": [assistant("Lovely, I laughed.")], "rejected": [assistant("Dull.")]}
    expected = load(tiny_tokenizer, tmp_path, [explicit])
    assert load(tiny_tokenizer, tmp_path, [ULTRAFEEDBACK], "uf.jsonl") == expected
    # the prompt column as the same messages, or absent (implicit), reads the same
    as_messages = ULTRAFEEDBACK | {"prompt": [user("How was the film?")]}
    assert load(tiny_tokenizer, tmp_path, [as_messages], "uf2.jsonl") == expected
    implicit = {key: ULTRAFEEDBACK[key] for key in ("chosen", "rejected")}
    assert load(tiny_tokenizer, tmp_path, [implicit], "uf3.jsonl") == expected
    # a string prompt before assistant-only answers is the user's turn
    string_prompt = {"prompt": "How was the film?", "chosen": [assistant("Lovely, I laughed.")], "rejected": [assistant("Dull.")]}
    assert load(tiny_tokenizer, tmp_path, [string_prompt], "uf4.jsonl") == expected


def test_multi_turn_conversations_split_at_the_last_shared_message(tmp_path, tiny_tokenizer):
    turns = [user("Hi."), assistant("Hello!"), user("How was the film?")]
    row = {"prompt": "How was the film?", "chosen": [*turns, assistant("Lovely.")], "rejected": [*turns, assistant("Dull.")]}
    explicit = {"prompt": turns, "chosen": [assistant("Lovely.")], "rejected": [assistant("Dull.")]}
    assert load(tiny_tokenizer, tmp_path, [row], "mt.jsonl") == load(tiny_tokenizer, tmp_path, [explicit])


@pytest.mark.parametrize("prompt", ["How was the play?", [user("How was the play?")]])
def test_a_prompt_column_that_contradicts_the_repeated_turns_is_located(tmp_path, tiny_tokenizer, prompt):
    rows = [ULTRAFEEDBACK, ULTRAFEEDBACK | {"prompt": prompt}]
    with pytest.raises(DataError) as error:
        load(tiny_tokenizer, tmp_path, rows, "uf.jsonl")
    assert (error.value.row, error.value.field) == (2, "prompt")
    assert "chosen and rejected open with the same 1 message(s)" in str(error.value)


STACK_EXCHANGE = {"qid": 7, "question": "How was the film?", "date": "2023/01/01",
                  "response_j": " Lovely, I laughed.", "response_k": " Dull."}
SE_COLUMNS = {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}


def test_stack_exchange_layout_through_a_column_map(tmp_path, tiny_tokenizer):
    explicit = {"prompt": "How was the film?", "chosen": " Lovely, I laughed.", "rejected": " Dull."}
    assert load(tiny_tokenizer, tmp_path, [STACK_EXCHANGE], "se.jsonl", columns=SE_COLUMNS) == load(tiny_tokenizer, tmp_path, [explicit])


def test_a_column_map_reaches_every_field_and_every_module(tmp_path, tiny_tokenizer):
    """A mapped column wins over a column that happens to carry the field's own name."""
    row = {"prompt": "ignored", "q": "Say hi.", "a": " Hi!"}
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(row) + "\n")
    module = SFTDataModule(path=str(path), columns={"prompt": "q", "completion": "a"})
    module.tokenizer = tiny_tokenizer
    module.setup("fit")
    assert tiny_tokenizer.decode(module.train_rows[0]["prompt_ids"], skip_special_tokens=True) == "Say hi."


def test_a_missing_mapped_column_names_the_map(tmp_path, tiny_tokenizer):
    row = {key: value for key, value in STACK_EXCHANGE.items() if key != "response_j"}
    with pytest.raises(DataError) as error:
        load(tiny_tokenizer, tmp_path, [STACK_EXCHANGE, row], "se.jsonl", columns=SE_COLUMNS)
    assert str(error.value).endswith(
        "se.jsonl, row 2, field 'chosen': missing; the row has fields ['date', 'qid', 'question', 'response_k'] "
        "(the field is read from column 'response_j', as `columns` maps it)")


def test_a_column_map_with_an_unknown_field_or_a_column_twice_is_refused():
    with pytest.raises(ValueError, match="PreferenceDataModule reads no field 'chosn'; its fields are prompt, chosen"):
        PreferenceDataModule(path="x.jsonl", columns={"chosn": "response_j"})
    with pytest.raises(ValueError, match="one column mapped to two fields"):
        PreferenceDataModule(path="x.jsonl", columns={"chosen": "a", "rejected": "a"})


def test_the_column_map_through_the_command(capsys, tmp_path):
    """The recipe key as a user types it, and its errors as one line."""
    path = tmp_path / "se.jsonl"
    path.write_text("".join(json.dumps(STACK_EXCHANGE | {"qid": k}) + "\n" for k in range(4)))
    base = ["fit", "--config", "recipes/dpo/tiny.yaml", "--trainer.logger", "false", "--trainer.max_steps", "1",
            "--trainer.enable_progress_bar", "false", "--model.init_args.export_dir", "null", "--data.init_args.path", str(path)]
    assert main([*base, "--data.init_args.columns", json.dumps(SE_COLUMNS)]) == 0
    capsys.readouterr()
    assert main([*base, "--data.init_args.columns", json.dumps(SE_COLUMNS | {"chosen": "response_x"})]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}, row 1, field 'chosen': missing;" in err and "column 'response_x', as `columns` maps it" in err

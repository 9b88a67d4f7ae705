import json

import pytest

from lightning_rlhf.data import DataError, PreferenceDataModule, SFTDataModule


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def setup_module_with(cls, tokenizer, path, **kwargs):
    module = cls(path=str(path), **kwargs)
    module.tokenizer = tokenizer
    module.setup("fit")
    return module


PAIRS = [
    {"prompt": "How was it?", "chosen": " Lovely.", "rejected": " Dull."},
    {"prompt": "Name a colour.", "chosen": " Blue.", "rejected": " Seven."},
]


# -- formats -------------------------------------------------------------------------------
def test_preference_explicit_prompt_tokenises_prompt_once_and_appends_eos(tmp_path, tiny_tokenizer):
    module = setup_module_with(PreferenceDataModule, tiny_tokenizer, write_jsonl(tmp_path / "p.jsonl", PAIRS))
    row = module.train_rows[0]
    assert tiny_tokenizer.decode(row["prompt_ids"]) == "How was it?"
    assert tiny_tokenizer.decode(row["chosen_ids"]) == " Lovely.<|eos|>"
    assert tiny_tokenizer.decode(row["rejected_ids"]) == " Dull.<|eos|>"


def test_preference_batch_is_chosen_then_rejected(tmp_path, tiny_tokenizer):
    module = setup_module_with(PreferenceDataModule, tiny_tokenizer, write_jsonl(tmp_path / "p.jsonl", PAIRS), batch_size=2)
    module.train_rows.sort(key=lambda r: len(r["prompt_ids"]))
    batch = module.collator()(module.train_rows)
    assert batch["input_ids"].shape[0] == 4
    texts = [tiny_tokenizer.decode(ids[mask]) for ids, mask in zip(batch["input_ids"], batch["completion_mask"])]
    assert texts == [" Lovely.<|eos|>", " Blue.<|eos|>", " Dull.<|eos|>", " Seven.<|eos|>"]
    # padding is never attended to nor trained on
    assert not (batch["completion_mask"] & ~batch["attention_mask"]).any()


def test_implicit_prompt_string_cut_at_whitespace(tmp_path, tiny_tokenizer):
    rows = [{"chosen": "Q: how was it? A: good", "rejected": "Q: how was it? A: great"}]
    module = setup_module_with(PreferenceDataModule, tiny_tokenizer, write_jsonl(tmp_path / "p.jsonl", rows))
    row = module.train_rows[0]
    assert tiny_tokenizer.decode(row["prompt_ids"]) == "Q: how was it? A: "
    assert tiny_tokenizer.decode(row["chosen_ids"]) == "good<|eos|>"


def test_conversational_implicit_prompt_uses_chat_template(tmp_path, tiny_tokenizer):
    user = {"role": "user", "content": "Hi"}
    rows = [{"chosen": [user, {"role": "assistant", "content": "Hello!"}], "rejected": [user, {"role": "assistant", "content": "Go."}]}]
    module = setup_module_with(PreferenceDataModule, tiny_tokenizer, write_jsonl(tmp_path / "p.jsonl", rows))
    row = module.train_rows[0]
    assert tiny_tokenizer.decode(row["prompt_ids"]) == "<|user|>Hi<|eos|><|assistant|>"
    assert tiny_tokenizer.decode(row["chosen_ids"]) == "Hello!<|eos|>"  # the template's own EOS is not doubled


def test_sft_masks_the_prompt(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "Name a colour.", "completion": " Blue."}]
    module = setup_module_with(SFTDataModule, tiny_tokenizer, write_jsonl(tmp_path / "s.jsonl", rows))
    batch = module.collator()(module.train_rows)
    ids, mask = batch["input_ids"][0], batch["completion_mask"][0]
    assert tiny_tokenizer.decode(ids[mask]) == " Blue.<|eos|>"
    assert tiny_tokenizer.decode(ids[~mask]) == "Name a colour."


def test_sft_train_on_prompt_trains_every_token(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "Name a colour.", "completion": " Blue."}]
    module = setup_module_with(SFTDataModule, tiny_tokenizer, write_jsonl(tmp_path / "s.jsonl", rows), train_on_prompt=True)
    batch = module.collator()(module.train_rows)
    assert batch["completion_mask"].all()


def test_sft_messages_and_text_rows(tmp_path, tiny_tokenizer):
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]},
        {"text": "plain text"},
    ]
    module = setup_module_with(SFTDataModule, tiny_tokenizer, write_jsonl(tmp_path / "s.jsonl", rows))
    first, second = module.train_rows
    assert tiny_tokenizer.decode(first["completion_ids"]) == "Hey<|eos|>"
    assert second["prompt_ids"] == [] and tiny_tokenizer.decode(second["completion_ids"]) == "plain text<|eos|>"


# -- file types ----------------------------------------------------------------------------
def test_json_csv_parquet_and_saved_dataset_read_alike(tmp_path, tiny_tokenizer):
    import datasets
    import pandas as pd

    (tmp_path / "p.json").write_text(json.dumps(PAIRS))
    pd.DataFrame(PAIRS).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame(PAIRS).to_parquet(tmp_path / "p.parquet")
    datasets.Dataset.from_list(PAIRS).save_to_disk(str(tmp_path / "saved"))
    expected = setup_module_with(PreferenceDataModule, tiny_tokenizer, write_jsonl(tmp_path / "p.jsonl", PAIRS)).train_rows
    for name in ["p.json", "p.csv", "p.parquet", "saved"]:
        assert setup_module_with(PreferenceDataModule, tiny_tokenizer, tmp_path / name).train_rows == expected, name


def test_val_fraction_holds_out_rows(tmp_path, tiny_tokenizer):
    rows = [{"prompt": f"p{i}", "chosen": " a", "rejected": " b"} for i in range(10)]
    module = setup_module_with(PreferenceDataModule, tiny_tokenizer, write_jsonl(tmp_path / "p.jsonl", rows), val_fraction=0.2)
    assert len(module.train_rows) == 8 and len(module.val_rows) == 2


# -- truncation policy -----------------------------------------------------------------------
def test_truncation_prompt_from_left_completion_from_right(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "abcdefghij", "chosen": " 0123456789", "rejected": " xyz"}]
    module = setup_module_with(
        PreferenceDataModule, tiny_tokenizer, write_jsonl(tmp_path / "p.jsonl", rows), max_length=10, max_prompt_length=4
    )
    row = module.train_rows[0]
    assert tiny_tokenizer.decode(row["prompt_ids"]) == "ghij"
    assert tiny_tokenizer.decode(row["chosen_ids"]) == " 01234"
    assert tiny_tokenizer.decode(row["rejected_ids"]) == " xyz<|eos|>"


def test_pair_identical_after_truncation_is_dropped_and_counted(tmp_path, tiny_tokenizer, caplog):
    rows = [{"prompt": "abc", "chosen": " ok", "rejected": " no"}, {"prompt": "", "chosen": "x", "rejected": "y"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    module = setup_module_with(PreferenceDataModule, tiny_tokenizer, path, max_length=4, max_prompt_length=3)
    assert len(module.train_rows) == 1
    assert module.drop_reports == [f"dropped 1 of 2 rows from {path}: 1 chosen identical to rejected after truncation"]
    assert "dropped 1 of 2 rows" in caplog.text


def test_completion_with_no_trainable_token_is_dropped(tiny_tokenizer):
    from lightning_rlhf.data.tokenize import Tokenization

    tokenization = Tokenization(tiny_tokenizer, max_length=8, max_prompt_length=4)
    assert tokenization.truncate([], [5]) is None  # no prompt: the only token has nothing to be predicted from
    assert tokenization.truncate([1], [5]).completion_ids == [5]


def test_identical_and_empty_completions_are_counted_drops(tmp_path, tiny_tokenizer):
    rows = PAIRS + [{"prompt": "a", "chosen": " same", "rejected": " same"}, {"prompt": "b", "chosen": "", "rejected": " x"}]
    module = setup_module_with(PreferenceDataModule, tiny_tokenizer, write_jsonl(tmp_path / "p.jsonl", rows))
    assert len(module.train_rows) == 2
    assert "1 chosen identical to rejected" in module.drop_reports[0]
    assert "1 empty completion" in module.drop_reports[0]


# -- bad input: each names the file, the row and the field ----------------------------------
# (file content, row, field, words of the problem): also driven through the command line
# by test_bad_input.py, which checks the printed line names the same file, row and field.
BAD_PREFERENCE_ROWS = [
    pytest.param('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n', 2, None, "malformed JSON",
                 id="malformed-json"),
    pytest.param('{"prompt": "a", "chosen": "b"}\n', 1, "rejected", "missing", id="missing-field"),
    pytest.param('{"prompt": "a", "chosen": 3, "rejected": "c"}\n', 1, "chosen", "expected a string or a list of messages, got int",
                 id="wrong-type"),
    pytest.param('{"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"}\n', 1, "margin", "expected a number",
                 id="bad-margin"),
    pytest.param('[1, 2]\n', 1, None, "expected a JSON object", id="not-an-object"),
    pytest.param(
        '{"chosen": [{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}],'
        ' "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}]}\n',
        1,
        "chosen",
        "unknown role 'wizard'",
        id="unknown-role",
    ),
    pytest.param('{"prompt": "a", "chosen": [{"role": "assistant", "content": "b"}], "rejected": "c"}\n', 1, "rejected", "both",
                 id="mixed-kinds"),
]


@pytest.mark.parametrize("content, row, field, words", BAD_PREFERENCE_ROWS)
def test_bad_preference_rows_are_located(tmp_path, tiny_tokenizer, content, row, field, words):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        setup_module_with(PreferenceDataModule, tiny_tokenizer, path)
    error = info.value
    assert (error.source, error.row, error.field) == (str(path), row, field)
    assert words in str(error) and str(path) in str(error)


def test_invalid_utf8_is_located(tmp_path, tiny_tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "\xff\xfe", "chosen": "b", "rejected": "c"}\n')
    with pytest.raises(DataError, match=r"row 2: invalid UTF-8"):
        setup_module_with(PreferenceDataModule, tiny_tokenizer, path)


def test_sft_row_without_completion_is_located(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"row 2: an SFT row needs"):
        setup_module_with(SFTDataModule, tiny_tokenizer, path)


def test_conversational_rows_need_a_chat_template(tmp_path, tiny_tokenizer):
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = None
    user = {"role": "user", "content": "Hi"}
    rows = [{"prompt": [user], "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}]
    with pytest.raises(DataError, match=r"row 1: conversational data needs a chat template"):
        setup_module_with(PreferenceDataModule, tokenizer, write_jsonl(tmp_path / "p.jsonl", rows))


def test_missing_file_and_unknown_suffix(tmp_path, tiny_tokenizer):
    with pytest.raises(FileNotFoundError, match=r"does not exist$"):
        setup_module_with(PreferenceDataModule, tiny_tokenizer, tmp_path / "nope.jsonl")
    # a shipped recipe's relative path, run from elsewhere: the message says where it looked
    with pytest.raises(FileNotFoundError, match=r"does not exist \(relative paths are read from the working directory, /"):
        setup_module_with(PreferenceDataModule, tiny_tokenizer, "recipes/data/no_such_file.jsonl")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        setup_module_with(PreferenceDataModule, tiny_tokenizer, tmp_path / "p.txt")


def test_every_row_dropped_is_an_error(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": " x", "rejected": " x"}])
    with pytest.raises(DataError, match="every row was dropped"):
        setup_module_with(PreferenceDataModule, tiny_tokenizer, path)

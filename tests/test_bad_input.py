"""Bad input, case by case: each is a clear error (file, row, field, what was expected) or
a counted, reported drop, and the command line prints it as one line.

Where the other cases are tested (not repeated here):

==========================================  =============================================================
case                                        test
==========================================  =============================================================
malformed JSON, missing / wrongly typed     test_data.py::test_bad_preference_rows_are_located
field, non-object row, unknown role         (parametrised: row, field and problem checked)
SFT row without a completion                test_data.py::test_sft_row_without_completion_is_located
empty completion, chosen == rejected        test_data.py::test_identical_and_empty_completions_are_counted_drops
(counted drops), every row dropped          test_data.py::test_every_row_dropped_is_an_error
prompt longer than the maximum              test_data.py::test_truncation_prompt_from_left_completion_from_right
(truncated from the left, not an error);    test_data.py::test_pair_identical_after_truncation_is_dropped_and_counted
nothing left to train on after truncation   test_data.py::test_completion_with_no_trainable_token_is_dropped
invalid UTF-8                               test_data.py::test_invalid_utf8_is_located
conversation without a chat template        test_data.py::test_conversational_rows_need_a_chat_template
missing data file, unknown file type        test_data.py::test_missing_file_and_unknown_suffix
unknown plugin name / recipe key (parser)   test_registry.py::test_unknown_plugin_name_lists_valid_names,
                                            test_registry.py::test_unknown_recipe_key_is_an_error
==========================================  =============================================================

An empty prompt is valid input, not bad input: SFT ``{"text"}`` rows and implicit-prompt
pairs with no shared beginning have one, and the model is conditioned on BOS alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_rlhf.cli import main
from tests.test_data import BAD_PREFERENCE_ROWS


def recipe_args(recipe: str) -> list[str]:
    return ["fit", "--config", recipe, "--trainer.logger", "false", "--trainer.max_steps", "1",
            "--trainer.enable_progress_bar", "false", "--model.init_args.export_dir", "null"]


DPO = recipe_args("recipes/dpo/tiny.yaml")


def run_cli(capsys, *args: str, recipe: list[str] = DPO) -> tuple[int, str]:
    code = main([*recipe, *args])
    return code, capsys.readouterr().err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model.init_args.algorithm.class_path", "dpoo"], "error: model.algorithm: unknown algorithm 'dpoo'; registered algorithms are:"),
        (["--model.init_args.algorithm.init_args.betta", "0.5"], "error: model.algorithm: Option 'betta' is not accepted"),
        (["--trainer.max_epochz", "3"], "error: unrecognized arguments: --trainer.max_epochz 3"),
        (["--model.init_args.policy.name_or_path", "/no/such/model"], "error: model path '/no/such/model' does not exist"),
        (["--data.init_args.path", "/no/such/pairs.jsonl"], "/no/such/pairs.jsonl"),
    ],
    ids=["unknown-plugin", "unknown-recipe-key", "unknown-trainer-key", "missing-model-path", "missing-data-file"],
)
def test_cli_prints_setup_errors_as_one_line(capsys, args, expected):
    code, err = run_cli(capsys, *args)
    assert code == 2
    assert error_line(err).startswith(expected) if expected.startswith("error:") else expected in error_line(err)


def test_cli_prints_a_bad_row_with_file_row_and_field(capsys, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "a", "chosen": " b", "rejected": " c"}\n{"prompt": "a", "chosen": 3, "rejected": " c"}\n')
    code, err = run_cli(capsys, "--data.init_args.path", str(path))
    assert code == 2
    assert error_line(err) == f"error: {path}, row 2, field 'chosen': expected a string or a list of messages, got int"


def test_debug_flag_shows_the_traceback(capsys):
    # the exception itself propagates, as jsonargparse wrapped it
    with pytest.raises(ValueError, match="model path '/no/such/model' does not exist"):
        main([*DPO, "--model.init_args.policy.name_or_path", "/no/such/model", "--debug"])


# -- tokenizers --------------------------------------------------------------------------------
def _saved_tokenizer(tiny_tokenizer, tmp_path, **overrides):
    directory = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(directory)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(overrides)
    config_path.write_text(json.dumps(config))
    return directory


def test_tokenizer_without_pad_token_pads_with_eos(tiny_tokenizer, tmp_path):
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.models.loading import load_tokenizer

    tokenizer = load_tokenizer(ModelSettings(name_or_path=str(_saved_tokenizer(tiny_tokenizer, tmp_path, pad_token=None))))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|eos|>"


def test_tokenizer_without_pad_or_eos_token_is_an_error(tiny_tokenizer, tmp_path):
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.models.loading import load_tokenizer

    directory = _saved_tokenizer(tiny_tokenizer, tmp_path, pad_token=None, eos_token=None)
    with pytest.raises(ValueError, match="has neither a pad nor an EOS token"):
        load_tokenizer(ModelSettings(name_or_path=str(directory)))


# -- reward models -----------------------------------------------------------------------------
@pytest.fixture
def two_label_classifier(tiny_tokenizer, tmp_path):
    """A sequence classifier with num_labels=2: not a scalar reward model."""
    from transformers import AutoModelForSequenceClassification

    from lightning_rlhf.models import builtin

    directory = tmp_path / "classifier"
    model = AutoModelForSequenceClassification.from_pretrained(builtin.resolve("builtin:tiny-llama"), num_labels=2)
    model.save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


def test_two_output_classifier_as_reward_source_is_an_error(two_label_classifier):
    from lightning_rlhf.rewards.reward_model_source import RewardModelSource

    with pytest.raises(ValueError, match=r"classifier with 2 outputs \(num_labels=2\); a reward model has one scalar"):
        RewardModelSource(str(two_label_classifier))


def test_two_output_classifier_in_reward_module_is_an_error(two_label_classifier):
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.modules.reward_module import RewardModule
    from lightning_rlhf_plugins.bradley_terry import BradleyTerry

    module = RewardModule(ModelSettings(name_or_path=str(two_label_classifier)), BradleyTerry())
    with pytest.raises(ValueError, match="2 outputs"):
        module.configure_model()


# -- every bad-input case of test_data.py, through the command a user types --------------------
def assert_located(err: str, path: Path, row: int | None, field: str | None, words: str) -> None:
    """The one printed line names the file, the row and the field, then the problem."""
    where = ", ".join([str(path)] + ([f"row {row}"] if row else []) + ([f"field {field!r}"] if field else []))
    line = error_line(err)
    assert line.startswith(f"error: {where}: "), line
    assert words in line, line


@pytest.mark.parametrize("content, row, field, words", BAD_PREFERENCE_ROWS)
def test_cli_prints_every_bad_preference_row_located(capsys, tmp_path, content, row, field, words):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    code, err = run_cli(capsys, "--data.init_args.path", str(path))
    assert code == 2
    assert_located(err, path, row, field, words)


def test_cli_prints_invalid_utf8_located(capsys, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "\xff\xfe", "chosen": "b", "rejected": "c"}\n')
    code, err = run_cli(capsys, "--data.init_args.path", str(path))
    assert code == 2
    assert_located(err, path, 2, None, "invalid UTF-8")


def test_cli_prints_an_sft_row_without_completion_located(capsys, tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "answer": "b"}\n')
    code, err = run_cli(capsys, "--data.init_args.path", str(path), recipe=recipe_args("recipes/sft/tiny.yaml"))
    assert code == 2
    assert_located(err, path, 2, None, "an SFT row needs")


@pytest.mark.parametrize("label", [1, "yes"])
def test_cli_prints_a_bad_kto_label_located(capsys, tmp_path, label):
    path = tmp_path / "unpaired.jsonl"
    path.write_text(json.dumps({"prompt": "Q?", "completion": " A.", "label": True}) + "\n"
                    + json.dumps({"prompt": "Q?", "completion": " B.", "label": label}) + "\n")
    code, err = run_cli(capsys, "--data.init_args.path", str(path), recipe=recipe_args("recipes/kto/tiny.yaml"))
    assert code == 2
    assert_located(err, path, 2, "label", "")


def test_cli_prints_conversations_without_a_chat_template_located(capsys, tmp_path):
    from lightning_rlhf.models import builtin

    model = tmp_path / "no-template"
    shutil.copytree(builtin.resolve("builtin:tiny-llama"), model)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    for template in model.glob("chat_template.*"):
        template.unlink()
    path = tmp_path / "chat.jsonl"
    user = {"role": "user", "content": "Hi"}
    path.write_text(json.dumps({"prompt": [user], "chosen": [{"role": "assistant", "content": "a"}],
                                "rejected": [{"role": "assistant", "content": "b"}]}) + "\n")
    code, err = run_cli(capsys, "--data.init_args.path", str(path), "--model.init_args.policy.name_or_path", str(model))
    assert code == 2
    assert_located(err, path, 1, None, "conversational data needs a chat template")


def test_cli_prints_an_unknown_file_type_and_every_row_dropped(capsys, tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("x")
    code, err = run_cli(capsys, "--data.init_args.path", str(path))
    assert code == 2
    assert_located(err, path, None, None, "unknown file type '.txt'")
    path = tmp_path / "same.jsonl"
    path.write_text('{"prompt": "a", "chosen": " x", "rejected": " x"}\n')
    code, err = run_cli(capsys, "--data.init_args.path", str(path))
    assert code == 2
    assert_located(err, path, None, None, "every row was dropped")


def test_the_installed_command_prints_a_cut_off_row(tmp_path):
    """The case a user met: row 2 cut off mid-object printed json's internal ``error: 27``."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "chosen": " b", "rejected": " c"}\n{"prompt": "a", "chosen": \n')
    command = [str(Path(sys.executable).with_name("lightning-rlhf")), *DPO, "--data.init_args.path", str(path)]
    if not Path(command[0]).exists():
        command = [sys.executable, "-m", "lightning_rlhf.cli", *command[1:]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_MODE": "offline"})
    assert done.returncode == 2, done.stderr
    assert_located(done.stderr, path, 2, None, "malformed JSON: Expecting value at column 27")  # where the row ends

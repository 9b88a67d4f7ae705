"""Every recipe in the repository parses: keys, types and plugin names are all valid."""

from pathlib import Path

import pytest

from lightning_rlhf.training_cli import RecipeCheckCLI as ParseOnlyCLI
from lightning_rlhf.training_cli import RLHFCLI

# recipes/pipelines holds pipeline files, recipes/rewards reward-source specs and
# recipes/judges judge specs, not fit recipes.
RECIPES = sorted(str(p) for p in Path("recipes").rglob("*.yaml") if not {"pipelines", "rewards", "judges"} & set(p.parts))
PIPELINES = sorted(str(p) for p in Path("recipes/pipelines").glob("*.yaml"))
JUDGES = sorted(str(p) for p in Path("recipes/judges").glob("*.yaml"))


def test_there_are_recipes():
    assert "recipes/dpo/tiny.yaml" in RECIPES and "recipes/sft/tiny.yaml" in RECIPES


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_parses(recipe):
    first_line = Path(recipe).read_text().splitlines()[0]
    assert first_line.startswith("# "), f"{recipe} needs a one-line '# description' first"
    cli = ParseOnlyCLI(args=["--config", recipe], run=False)
    config = cli.config
    assert config.model.class_path.startswith("lightning_rlhf.")
    assert config.trainer.logger is not None, f"{recipe} configures no logger"


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_pipeline_checks(pipeline):
    """Every stage of every shipped pipeline is checked (options, judge specs, recipe files)
    without running anything."""
    from lightning_rlhf.pipeline import load_pipeline

    assert Path(pipeline).read_text().startswith("# "), f"{pipeline} needs a one-line '# description' first"
    assert load_pipeline(pipeline).stages


@pytest.mark.parametrize("judge", JUDGES)
def test_judge_spec_parses(judge):
    from lightning_rlhf.rewards.judge import check_judge_spec

    assert Path(judge).read_text().startswith("# "), f"{judge} needs a one-line '# description' first"
    check_judge_spec(judge)


def test_judge_spec_check_catches_a_wrong_type(tmp_path):
    from lightning_rlhf.rewards.judge import check_judge_spec

    with pytest.raises(Exception, match="batch_size"):
        check_judge_spec({"class_path": "lightning_rlhf.rewards.PairwiseJudge", "init_args": {"path": "x", "batch_size": "many"}})


def test_a_recipe_finds_its_data_from_any_folder(tmp_path, monkeypatch):
    """The shipped recipes name their data from the repository's root; run from elsewhere,
    the path is found above the recipe. What is found nowhere says where it was looked for."""
    recipe = str(Path("recipes/dpo/tiny.yaml").resolve())
    monkeypatch.chdir(tmp_path)
    cli = RLHFCLI(args=["--config", recipe], run=False)
    path = Path(cli.config.data.init_args.path)
    assert path.is_absolute() and path == (Path(recipe).parents[2] / "recipes/data/tiny_preferences.jsonl")


def test_a_missing_data_file_names_where_it_was_looked_for(tmp_path, monkeypatch, capsys):
    from lightning_rlhf.cli import main

    recipe = Path("recipes/dpo/tiny.yaml").resolve()
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(recipe), "--data.init_args.path", "recipes/data/missing.jsonl"]) == 2
    error = capsys.readouterr().err
    assert "data.path: data file 'recipes/data/missing.jsonl' does not exist; looked in the working directory" in error
    assert str(recipe.parent) in error and str(recipe.parents[2]) in error

"""Every recipe in the repository parses: keys, types and plugin names are all valid."""

from pathlib import Path

import pytest

from lightning_rlhf.training_cli import RLHFCLI

# recipes/pipelines holds pipeline files and recipes/rewards reward-source specs, not fit recipes.
RECIPES = sorted(str(p) for p in Path("recipes").rglob("*.yaml") if not {"pipelines", "rewards"} & set(p.parts))


class ParseOnlyCLI(RLHFCLI):
    """Parses and validates a recipe without loading any model (real-model recipes name
    hub models this machine cannot download)."""

    def instantiate_classes(self) -> None:
        pass


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

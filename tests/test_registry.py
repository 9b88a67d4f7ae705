import sys
import textwrap

import pytest
import yaml

from lightning_rlhf import Algorithm, LossOutput, register_algorithm, registry
from lightning_rlhf.cli import main
from lightning_rlhf.training_cli import RLHFCLI, resolve_plugin_names

PLUGIN_SOURCE = textwrap.dedent(
    '''
    from lightning_rlhf import Algorithm, LossOutput, register_algorithm


    @register_algorithm("{name}")
    class Unlikelihood(Algorithm):
        """Push the rejected answer down, nothing else (a test plugin)."""

        data = "preference"

        def __init__(self, weight: float = 1.0):
            self.weight = weight

        def loss(self, ctx, batch):
            chosen, rejected = ctx.policy_logps(batch).mean().chunk(2)
            loss = self.weight * rejected.mean()
            return LossOutput(loss, {{"logps/rejected": rejected.detach().mean()}})
    '''
)

RECIPE = textwrap.dedent(
    """
    trainer: {{max_steps: 2, logger: false, enable_checkpointing: false, enable_progress_bar: false,
              enable_model_summary: false, default_root_dir: {root}}}
    model:
      class_path: lightning_rlhf.PolicyModule
      init_args:
        policy: {{name_or_path: "builtin:tiny-llama"}}
        algorithm: {{class_path: {algorithm}, init_args: {{weight: 0.5}}}}
    data:
      class_path: lightning_rlhf.data.PreferenceDataModule
      init_args: {{path: recipes/data/tiny_preferences.jsonl, batch_size: 4, max_length: 64}}
    """
)


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A plugin in a module of its own, outside the package, importable from tmp_path."""

    def make(module_name, name):
        (tmp_path / f"{module_name}.py").write_text(PLUGIN_SOURCE.format(name=name))
        monkeypatch.syspath_prepend(str(tmp_path))
        return module_name

    return make


def fit_recipe(tmp_path, algorithm):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(root=tmp_path, algorithm=algorithm))
    cli = RLHFCLI(args=["fit", "--config", str(recipe)])
    return cli


def test_external_plugin_by_class_path(tmp_path, plugin_module):
    module = plugin_module("my_unlikelihood", "unlikelihood_by_path")
    cli = fit_recipe(tmp_path, f"{module}.Unlikelihood")
    assert type(cli.model.algorithm).__name__ == "Unlikelihood"
    assert cli.model.algorithm.weight == 0.5
    assert cli.trainer.global_step == 2


def test_external_plugin_by_entry_point(tmp_path, plugin_module, monkeypatch):
    module = plugin_module("ep_unlikelihood", "unlikelihood")
    dist = tmp_path / "ep_unlikelihood-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-unlikelihood\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[lightning_rlhf.plugins]\nunlikelihood = {module}:Unlikelihood\n")
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    assert "unlikelihood" in registry.list_algorithms()
    cli = fit_recipe(tmp_path, "unlikelihood")
    assert registry.get_algorithm("unlikelihood") is type(cli.model.algorithm)
    registry._REGISTRY.pop("unlikelihood")


def test_unknown_plugin_name_lists_valid_names(tmp_path, capsys):
    with pytest.raises(SystemExit):
        fit_recipe(tmp_path, "dpoo")
    err = capsys.readouterr().err
    assert "unknown algorithm 'dpoo'" in err and "dpo" in err and "sft" in err


def test_name_clash_between_different_classes_is_an_error():
    class Other(Algorithm):
        """Another class."""

        data = "sft"

    with pytest.raises(ValueError, match="already registered"):
        register_algorithm("dpo")(Other)


def test_registering_the_same_class_again_is_idempotent():
    cls = registry.get_algorithm("dpo")
    assert register_algorithm("dpo")(cls) is cls
    assert registry.get_algorithm("dpo") is cls


def test_get_unknown_algorithm():
    with pytest.raises(registry.UnknownAlgorithmError, match="registered algorithms are: .*dpo"):
        registry.get_algorithm("nope")


def test_list_plugins_prints_every_plugin(capsys):
    assert main(["list-plugins"]) == 0
    out = capsys.readouterr().out
    for name, cls in registry.list_algorithms().items():
        line = next(l for l in out.splitlines() if l.startswith(name + " "))
        assert cls.data in line and cls.stage in line and cls.summary()[:20] in line


def test_built_in_plugins_come_from_entry_points():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert {"dpo", "sft"} <= names
    assert all(registry.get_algorithm(n).__module__.startswith("lightning_rlhf_plugins") for n in names if n in ("dpo", "sft"))


def test_every_shipped_plugin_file_has_an_entry_point():
    """A plugin file without its line in pyproject.toml would be missing from a fresh install."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["entry-points"][registry.ENTRY_POINT_GROUP]
    modules = {value.split(":")[0].rpartition(".")[2] for value in declared.values()}
    files = {path.stem for path in (root / "plugins").glob("*.py") if path.stem != "__init__"}
    assert files == modules, f"plugin files without an entry point: {sorted(files - modules)}"


def test_unknown_recipe_key_is_an_error(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(root=tmp_path, algorithm="dpo").replace("weight: 0.5", "betta: 0.5"))
    with pytest.raises(SystemExit):
        RLHFCLI(args=["fit", "--config", str(recipe)])
    assert "betta" in capsys.readouterr().err


def test_the_short_override_form_reaches_the_plugin(capsys):
    """The README's `--model.algorithm.beta 0.2`, not `--model.init_args.algorithm.init_args.beta`."""
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", "recipes/dpo/tiny.yaml", "--model.algorithm.beta", "0.27", "--print_config"])
    assert exit_.value.code == 0
    algorithm = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["algorithm"]
    assert algorithm["init_args"]["beta"] == 0.27


def test_plugin_names_become_import_paths_before_parsing():
    """A recipe's ``class_path: dpo`` (at an algorithm key, or a loaded algorithm spec) is
    handed to jsonargparse as the import path; other class paths are left alone."""
    dpo = registry.class_path("dpo")
    recipe = {"model": {"init_args": {"algorithm": {"class_path": "dpo"}}}, "trainer": {"callbacks": [{"class_path": "dpo"}]}}
    assert resolve_plugin_names(recipe) == {"model": {"init_args": {"algorithm": {"class_path": dpo}}},
                                            "trainer": {"callbacks": [{"class_path": "dpo"}]}}
    assert resolve_plugin_names({"class_path": "dpo", "init_args": {"beta": 0.2}}) == {"class_path": dpo, "init_args": {"beta": 0.2}}
    assert resolve_plugin_names({"model": {"algorithm": "DPO"}}) == {"model": {"algorithm": "DPO"}}  # jsonargparse's own
    with pytest.raises(registry.UnknownAlgorithmError, match="model.algorithm: unknown algorithm 'dpoo'; registered algorithms are: .*dpo"):
        resolve_plugin_names({"model": {"init_args": {"algorithm": {"class_path": "dpoo"}}}})


@pytest.mark.parametrize("override", [["--model.algorithm=ipo"], ["--model.init_args.algorithm", "ipo"],
                                      ["--model.algorithm.class_path", "ipo"]])
def test_a_plugin_name_on_the_command_line(capsys, override):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", "recipes/dpo/tiny.yaml", *override, "--print_config"])
    assert exit_.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["algorithm"]["class_path"] == registry.class_path("ipo")

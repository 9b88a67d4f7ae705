"""The training commands (fit, validate, test, predict): Lightning's CLI driven by a recipe.

Its own module so that the pipeline's fit stage can run it without importing the
``lightning-rlhf`` entry point, which dispatches to the pipeline command.
"""

from __future__ import annotations

import importlib
import re
import sys
import warnings
from typing import Any

import lightning as L
import yaml
from jsonargparse import Namespace, get_loader, set_loader
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from lightning_rlhf import registry
from lightning_rlhf.algorithm import OnlineAlgorithm
from lightning_rlhf.cpu import warn_if_slow_bf16


# Recipes name a plugin by its registered name (``class_path: dpo``, ``--model.algorithm
# dpo``). jsonargparse resolves a dot-free ``class_path`` against class names only, so
# RLHFCLI hands it import paths: recipe files and YAML values are read through a loader
# that resolves the names in them, and the command line's algorithm overrides are
# resolved before parsing.
PARSER_MODE = "yaml+plugin_names"
_IDENTIFIER = re.compile(r"[A-Za-z_][\w.]*")


def resolve_plugin_names(value: Any, key: str = "") -> Any:
    """``value`` (loaded YAML found at recipe key ``key``) with every plugin name given as an
    algorithm's ``class_path`` replaced by the registered class's import path.

    A value loaded without its key (``--model.algorithm '{class_path: dpo}'``) is an
    algorithm when its ``class_path`` is a registered name.
    """
    if isinstance(value, dict):
        value = {k: resolve_plugin_names(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        class_path = value.get("class_path")
        if isinstance(class_path, str) and (_is_algorithm_key(key) or (not key and class_path in registry.list_algorithms())):
            value["class_path"] = algorithm_class_path(class_path, key or "algorithm")
        if class_path in _POLICY_MODULE and _trains_online(value):
            warnings.warn(f"{key or 'model'}.class_path: {class_path} trains offline algorithms; this recipe's is online, "
                          "so lightning_rlhf.OnlinePolicyModule trains it (write that class_path in the recipe)", FutureWarning)
            value["class_path"] = "lightning_rlhf.OnlinePolicyModule"
        elif class_path in _POLICY_MODULE:
            _move_generation_batch_size(value, key or "model")
        return value
    if isinstance(value, str) and _is_algorithm_key(key):
        return algorithm_class_path(value, key)
    return value


def algorithm_class_path(name: str, key: str) -> str:
    """The import path for an algorithm named ``name`` at recipe key ``key``: a registered
    name's class, anything else unchanged (an import path, a class name jsonargparse
    resolves); a dot-free name that is neither is an error listing the registered names."""
    algorithms = registry.list_algorithms()
    if name in algorithms:
        return registry.class_path(name)
    if "." not in name and not any(name == cls.__name__ for cls in algorithms.values()):
        key = key.replace(".init_args.", ".")
        raise registry.UnknownAlgorithmError(
            f"{key}: unknown algorithm {name!r}; registered algorithms are: {', '.join(algorithms)}"
        )
    return name


# A recipe written before the online module had its own class names PolicyModule for PPO.
_POLICY_MODULE = ("lightning_rlhf.PolicyModule", "lightning_rlhf.modules.policy.PolicyModule")


def _trains_online(module: dict) -> bool:
    """The module's ``init_args.algorithm`` (already resolved to an import path) is online."""
    algorithm = (module.get("init_args") or {}).get("algorithm")
    path = algorithm.get("class_path") if isinstance(algorithm, dict) else algorithm
    if not isinstance(path, str) or "." not in path:
        return False
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return False  # jsonargparse reports it
    return isinstance(cls, type) and issubclass(cls, OnlineAlgorithm)


def _move_generation_batch_size(module: dict, key: str) -> None:
    """Self-training recipes written before the split set the Grow phase's batch under
    ``online: {generation_batch_size: N}``; PolicyModule now takes it directly."""
    init_args = module.get("init_args")
    online = init_args.get("online") if isinstance(init_args, dict) else None
    if isinstance(online, dict) and set(online) == {"generation_batch_size"}:
        warnings.warn(f"{key}.init_args.online.generation_batch_size is now {key}.init_args.generation_batch_size "
                      "(write it there in the recipe)", FutureWarning)
        init_args["generation_batch_size"] = init_args.pop("online")["generation_batch_size"]


def _is_algorithm_key(key: str) -> bool:
    return key == "algorithm" or key.endswith(".algorithm")


def _is_name(value: str) -> bool:
    """A plugin name or import path, not a file, YAML or a YAML keyword such as ``null``."""
    if not _IDENTIFIER.fullmatch(value) or value.endswith((".yaml", ".yml", ".json")):
        return False
    return isinstance(yaml.safe_load(value), str)


def _load_yaml_resolving_plugin_names(text: str) -> Any:
    return resolve_plugin_names(get_loader("yaml")(text))


set_loader(PARSER_MODE, _load_yaml_resolving_plugin_names, (yaml.YAMLError,))


def _resolve_command_line(args: list[str]) -> list[str]:
    """``--model.algorithm dpo``, ``--model.init_args.algorithm=dpo`` and ``...algorithm.class_path
    dpo`` with the import path in place of the plugin name (a YAML value there goes through
    the loader)."""
    resolved = list(args)
    for i, arg in enumerate(resolved):
        if not arg.startswith("--"):
            continue
        option, equals, value = arg.partition("=")
        key = option[2:].removesuffix(".class_path").removesuffix(".help")
        if not _is_algorithm_key(key):
            continue
        if equals:
            if _is_name(value):
                resolved[i] = f"{option}={algorithm_class_path(value, key)}"
        elif i + 1 < len(resolved) and _is_name(resolved[i + 1]):
            resolved[i + 1] = algorithm_class_path(resolved[i + 1], key)
    return resolved


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Also send the fully resolved recipe to the logger (W&B's run config)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.logger is not None:
            config = self.parser.dump(self.config, skip_none=False, format="json")
            import json

            trainer.logger.log_hyperparams({"recipe": json.loads(config)})


class RLHFCLI(LightningCLI):
    def __init__(self, args=None, run: bool = True, exit_on_error: bool = True):
        registry.load_entry_points()
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=LoggerSaveConfigCallback,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"parser_mode": PARSER_MODE, "exit_on_error": exit_on_error},
            seed_everything_default=0,
            args=args,
            run=run,
        )

    def parse_arguments(self, parser, args) -> None:
        # Plugin names on the command line (or in a dict of arguments) become import paths
        # here; those in recipe files and YAML values, in the loader (PARSER_MODE).
        try:
            if isinstance(args, (dict, Namespace)):
                args = resolve_plugin_names(args.as_dict() if isinstance(args, Namespace) else dict(args))
            elif args is not None:
                args = _resolve_command_line(args)
            elif (resolved := _resolve_command_line(sys.argv[1:])) != sys.argv[1:]:
                args = resolved  # (passed on only when it differs: Lightning warns about args and sys.argv both)
            super().parse_arguments(parser, args)
        except registry.UnknownAlgorithmError as error:  # from the command line or the loader
            parser.error(str(error))

    def before_instantiate_classes(self) -> None:
        from lightning_rlhf.recipe_paths import resolve_data_paths

        config = self.config[self.subcommand] if self.subcommand else self.config
        recipes = [getattr(path, "absolute", None) or str(path) for path in (config.get("config") or [])]
        resolve_data_paths(config, recipes)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would merge the checkpoint's hyper_parameters into the recipe when
        # --ckpt_path names a file. Ours are plain-data copies of the settings (for
        # from_checkpoint and W&B), not constructor arguments, and the recipe given with
        # --config already defines the run: resuming reads only weights and run state.
        return

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        # On by default: resumable checkpoints written atomically, RNG/plugin state, a
        # SIGTERM checkpoint, a checkpoint when the reward server stays down, and the
        # divergence guard (see lightning_rlhf.callbacks). A recipe that lists one of these
        # callbacks (or a ModelCheckpoint) configures it instead.
        from lightning_rlhf.callbacks import default_callbacks, default_plugins

        warn_if_slow_bf16(config.get("precision"), config.get("accelerator"))
        listed = _as_list(config.get("callbacks")) + list(callbacks)
        callbacks = list(callbacks) + default_callbacks(listed, checkpointing=config.get("enable_checkpointing") is not False)
        plugins = _as_list(config.get("plugins"))
        config["plugins"] = plugins + default_plugins(plugins)
        return super()._instantiate_trainer(config, callbacks)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class RecipeCheckCLI(RLHFCLI):
    """Parses and validates a recipe (keys, types, plugin names) without loading a model or
    looking for its data: what a pipeline checks before its first stage runs, when the
    data a fit reads is still to be written by an earlier stage."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass

    def _set_seed(self) -> None:
        pass  # a check changes no random state


def one_line(error: BaseException) -> str:
    """The root cause of a (possibly nested) recipe error, prefixed by the recipe key it is at.

    jsonargparse wraps an error raised while building the model or data in several layers
    of "Parser key ...: Does not validate against any of the Union subtypes"; the cause at
    the bottom of the chain is what the user needs (``Option 'betta' is not accepted``,
    ``model path '...' does not exist``), and the keys crossed on the way say where.
    """
    import re

    chain, keys = [], []
    while error is not None and error not in chain:
        chain.append(error)
        for key in re.findall(r'Parser key "([^"]+)"', str(error).split("\n", 1)[0]):
            if not keys or keys[-1] != key:
                keys.append(key)
        # ``raise ... from None`` cut the chain on purpose: what it hid (a parser's
        # internal StopIteration, say) is not the user's problem.
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    message = " ".join(str(chain[-1]).split())
    return f"{'.'.join(keys)}: {message}" if keys and len(chain) > 1 else message

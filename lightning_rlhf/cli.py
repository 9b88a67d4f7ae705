"""The ``lightning-rlhf`` command.

Training commands (fit, validate, test, predict) are Lightning's CLI driven by a recipe;
the others (list-plugins, list-recipes, export, ...) are small commands of their own.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable

import lightning as L
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from lightning_rlhf import registry
from lightning_rlhf.algorithm import Algorithm
from lightning_rlhf.callbacks.divergence import DivergenceError
from lightning_rlhf.cpu import warn_if_slow_bf16
from lightning_rlhf.data.errors import DataError


def _patch_algorithm_names() -> None:
    """Let a recipe name a plugin by its registered name (``class_path: dpo``).

    jsonargparse resolves a dot-free ``class_path`` against the *class* names of loaded
    subclasses; this teaches that one lookup the registry's names, and makes an unknown
    name an error that lists the valid ones.
    """
    from jsonargparse import _typehints

    original = _typehints.resolve_class_path_by_name
    if getattr(original, "_lightning_rlhf", False):
        return

    def resolve(cls, name: str) -> str:
        if isinstance(cls, type) and issubclass(cls, Algorithm) and "." not in name:
            algorithms = registry.list_algorithms()
            if name in algorithms:
                return registry.class_path(name)
            if not any(name == c.__name__ for c in algorithms.values()):
                raise registry.UnknownAlgorithmError(
                    f"unknown algorithm {name!r}; registered algorithms are: {', '.join(algorithms)}"
                )
        return original(cls, name)

    resolve._lightning_rlhf = True
    _typehints.resolve_class_path_by_name = resolve


# Errors with a message meant for the user: printed as one line by main().
USER_ERRORS = (DataError, FileNotFoundError, registry.UnknownAlgorithmError, ValueError, DivergenceError)


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Also send the fully resolved recipe to the logger (W&B's run config)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.logger is not None:
            config = self.parser.dump(self.config, skip_none=False, format="json")
            import json

            trainer.logger.log_hyperparams({"recipe": json.loads(config)})


class RLHFCLI(LightningCLI):
    def __init__(self, args=None, run: bool = True, exit_on_error: bool = True):
        _patch_algorithm_names()
        registry.load_entry_points()
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=LoggerSaveConfigCallback,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"parser_mode": "yaml", "exit_on_error": exit_on_error},
            seed_everything_default=0,
            args=args,
            run=run,
        )

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would merge the checkpoint's hyper_parameters into the recipe when
        # --ckpt_path names a file. Ours are plain-data copies of the settings (for
        # from_checkpoint and W&B), not constructor arguments, and the recipe given with
        # --config already defines the run: resuming reads only weights and run state.
        return

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        # On by default: resumable checkpoints written atomically, RNG/plugin state, a
        # SIGTERM checkpoint and the divergence guard (see lightning_rlhf.callbacks). A recipe
        # that lists one of these callbacks (or a ModelCheckpoint) configures it instead.
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


def _extra_commands() -> dict[str, Callable[[list[str]], int]]:
    from lightning_rlhf import commands

    return commands.COMMANDS


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LIGHTNING_RLHF_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    from jsonargparse import ArgumentError

    try:
        return _run(argv)
    except (*USER_ERRORS, ArgumentError) as e:
        # Bad recipes, data and paths are the user's to fix: one line, no traceback
        # (--debug or LIGHTNING_RLHF_DEBUG=1 shows it).
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1 if isinstance(e, DivergenceError) else 2


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


def _run(argv: list[str]) -> int:
    # main() (and the pipeline's fit stages) hand LightningCLI arguments that are not
    # sys.argv on purpose.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    extra = _extra_commands()
    if argv and argv[0] in extra:
        return extra[argv[0]](argv[1:]) or 0
    if argv and argv[0] in ("-h", "--help"):
        print("usage: lightning-rlhf {fit,validate,test,predict} --config RECIPE.yaml [overrides] [--debug]")
        print("       lightning-rlhf {" + ",".join(extra) + "} [...]\n")
        print("Training commands take a recipe (see `lightning-rlhf list-recipes`);")
        print("`lightning-rlhf fit --help` lists every recipe key.")
        return 0
    RLHFCLI(args=argv, exit_on_error=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

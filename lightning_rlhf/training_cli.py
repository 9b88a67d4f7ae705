"""The training commands (fit, validate, test, predict): Lightning's CLI driven by a recipe.

Its own module so that the pipeline's fit stage can run it without importing the
``lightning-rlhf`` entry point, which dispatches to the pipeline command.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from lightning_rlhf import registry
from lightning_rlhf.algorithm import Algorithm
from lightning_rlhf.cpu import warn_if_slow_bf16


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

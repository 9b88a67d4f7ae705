"""Build a reward source from what a user writes on a command line or in a recipe.

In a recipe, a reward source is a typed class spec that jsonargparse builds and checks
(unknown keys are errors)::

    reward:
      class_path: lightning_rlhf.rewards.RewardModelSource
      init_args: {path: runs/reward-tiny/export, batch_size: 32}

:func:`load_reward_source` takes that same dict, or one of these shorthands:

======================================  =============================================
``"gold"``                              the toy world's gold reward (:class:`GoldReward`)
a directory                             an exported reward model (:class:`RewardModelSource`),
                                        process reward model (:class:`StepRewardSource`), or
                                        pointwise judge with a ``judge.json`` (:class:`JudgeReward`)
a ``.yaml``/``.yml``/``.json`` file     a class spec as above (top level, or under ``reward:``)
``"package.module.function"``           a reward function (:class:`FunctionReward`)
``"http://..."`` or ``"https://..."``   a reward server, ``lightning-rlhf serve-reward`` (:class:`RemoteReward`)
======================================  =============================================
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from lightning_rlhf.rewards.base import FunctionReward, RewardSource

SHORTHANDS = "'gold', a reward-model directory, a .yaml/.json spec file, package.module.function, or a server's http(s):// URL"


def load_reward_source(spec: str | dict | RewardSource) -> RewardSource:
    """A :class:`RewardSource` from a shorthand string, a class-spec dict, or an instance."""
    if isinstance(spec, RewardSource):
        return spec
    if isinstance(spec, dict):
        return build_from_class_spec(spec)
    if not isinstance(spec, str):
        raise TypeError(f"a reward source spec is a string or a dict, got {type(spec).__name__}")
    if spec == "gold":
        from lightning_rlhf.rewards.gold import GoldReward

        return GoldReward()
    if spec.startswith(("http://", "https://")):
        from lightning_rlhf.rewards.remote import RemoteReward

        return RemoteReward(spec)
    path = Path(os.path.expanduser(spec))
    if path.is_dir() or spec.startswith("builtin:"):
        from lightning_rlhf.rewards.reward_model_source import RewardModelSource
        from lightning_rlhf.rewards.steps import StepRewardSource, is_process_reward_model

        if is_process_reward_model(str(path)):  # its defaults: the weakest step, steps on lines
            return StepRewardSource(spec)
        judge = _judge_kind(spec)
        if judge == "pointwise":
            from lightning_rlhf.rewards.judge import JudgeReward

            return JudgeReward(spec)
        if judge:
            raise ValueError(f"{spec} holds a {judge} judge: it compares two answers and gives none a score of its own; "
                             "use it with `label --judge` or `evaluate --judge`")

        return RewardModelSource(spec)
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise FileNotFoundError(f"reward spec file {spec!r} does not exist")
        return build_from_class_spec(_read_spec_file(path))
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in spec
    if "." in spec and not looks_like_path:
        return FunctionReward(spec)
    raise ValueError(f"cannot make a reward source of {spec!r}: expected {SHORTHANDS}")


def _judge_kind(spec: str) -> str | None:
    from lightning_rlhf.rewards.judge import read_judge_file

    return read_judge_file(spec).get("kind")


def _read_spec_file(path: Path) -> dict:
    import yaml

    config = yaml.safe_load(path.read_text())
    if isinstance(config, dict) and "class_path" not in config and isinstance(config.get("reward"), dict):
        config = config["reward"]
    if not isinstance(config, dict) or "class_path" not in config:
        raise ValueError(f"{path}: expected a reward source spec with a class_path (at the top level or under 'reward')")
    return config


def build_from_class_spec(spec: dict[str, Any]) -> RewardSource:
    """``{"class_path": ..., "init_args": {...}}`` -> the source, through jsonargparse, so
    types are checked and nested sources (``helpfulness: {class_path: ...}``) are built.
    The caller's dict is left as it was (jsonargparse turns nested mappings into namespaces
    in place)."""
    parser, config = _parse(copy.deepcopy(spec))
    return parser.instantiate_classes(config).reward


def check_reward_spec(spec: dict[str, Any] | str) -> None:
    """Validate a class spec (or a spec file) without building it: class paths, argument
    names and types. Nothing is loaded, so it works before the reward models exist."""
    if isinstance(spec, str):
        spec = _read_spec_file(Path(os.path.expanduser(spec)))
    _parse(spec)


def _parse(spec: dict[str, Any]):
    from jsonargparse import ArgumentParser

    import lightning_rlhf.rewards  # noqa: F401  (short class names resolve among imported subclasses)

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--reward", type=RewardSource)
    return parser, parser.parse_object({"reward": spec})

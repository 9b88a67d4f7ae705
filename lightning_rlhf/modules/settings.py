"""A module's settings as plain data, read off its constructor's signature.

The constructor is the schema: jsonargparse makes each documented argument a recipe key
and a ``--help`` line. A checkpoint stores the same arguments as plain data (so it loads
with ``torch.load(weights_only=True)`` and the run config in W&B reads like the recipe),
and ``from_hparams`` turns them back. Both directions go by each argument's type, so the
list of settings is written once, in the signature, never again in a
``save_hyperparameters`` call or a ``from_hparams``.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import asdict
from typing import Any, Callable

from lightning_rlhf.algorithm import Algorithm, algorithm_spec
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.models.critic import CriticSettings
from lightning_rlhf.modules.online import OnlineSettings, reward_spec
from lightning_rlhf.modules.optim import OptimizerSettings
from lightning_rlhf.rewards.base import RewardSource


def _algorithm_from_spec(spec: dict) -> Algorithm:
    from lightning_rlhf.registry import create_algorithm_from_spec  # the registry imports the plugins

    return create_algorithm_from_spec(spec)


def _reward_from_spec(spec: dict | None) -> RewardSource | None:
    from lightning_rlhf.rewards.spec import load_reward_source  # it reaches the reward-model loaders

    return load_reward_source(spec) if spec else None


def _critic_from_dict(values: dict | None) -> CriticSettings | None:
    if not values:
        return None
    values = dict(values)
    if values.get("model"):
        values["model"] = ModelSettings.from_dict(values["model"])
    return CriticSettings(**values)


def _asdict_or_none(settings) -> dict | None:
    return asdict(settings) if settings else None


# An argument's type -> (its plain form, back from the plain form); other types are plain already.
CONVERSIONS: dict[type, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    ModelSettings: (_asdict_or_none, lambda d: ModelSettings.from_dict(d) if d else None),
    Algorithm: (algorithm_spec, _algorithm_from_spec),
    # no optimiser given is stored as the defaults it trains with
    OptimizerSettings: (lambda o: asdict(o or OptimizerSettings()), lambda d: OptimizerSettings(**d) if d is not None else None),
    RewardSource: (reward_spec, _reward_from_spec),
    CriticSettings: (_asdict_or_none, _critic_from_dict),
    OnlineSettings: (_asdict_or_none, lambda d: OnlineSettings(**d) if d else None),
}


def to_plain(init: Callable, arguments: dict[str, Any], leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """The named arguments of ``init`` (one class's own ``__init__``) as plain data, in the
    signature's order; ``arguments`` may hold more (an ``__init__``'s ``locals()``)."""
    return {name: _conversion(kind)[0](arguments[name]) for name, kind in _settings(init, leave_out)}


def from_plain(init: Callable, hparams: dict[str, Any], leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """The arguments of ``init`` found in a checkpoint's ``hparams``; one it lacks (a
    checkpoint older than the setting) is left to the signature's default."""
    return {name: _conversion(kind)[1](hparams[name]) for name, kind in _settings(init, leave_out) if name in hparams}


def _settings(init: Callable, leave_out: tuple[str, ...]) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(init)
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [
        (name, hints.get(name))
        for name, parameter in inspect.signature(init).parameters.items()
        if name != "self" and parameter.kind in named and name not in leave_out
    ]


def _conversion(kind: Any) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
        kind = next((k for k in typing.get_args(kind) if k is not type(None)), None)
    for settings_type, conversion in CONVERSIONS.items():
        if isinstance(kind, type) and issubclass(kind, settings_type):
            return conversion
    return _SAME


def _same(value: Any) -> Any:
    return value


_SAME = (_same, _same)

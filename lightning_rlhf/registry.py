"""The algorithm registry: ``@register_algorithm`` plus entry-point discovery.

Built-in plugins and third-party ones are found the same way, through the entry-point
group ``lightning_rlhf.plugins`` (``name = "package.module:Class"``). Loading an entry
point imports its module, whose decorator registers the class.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TypeVar

from lightning_rlhf.algorithm import Algorithm

ENTRY_POINT_GROUP = "lightning_rlhf.plugins"

A = TypeVar("A", bound=type[Algorithm])

_REGISTRY: dict[str, type[Algorithm]] = {}
_entry_points_loaded = False


class UnknownAlgorithmError(ValueError):
    pass


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_algorithm(name: str) -> Callable[[A], A]:
    """Register an :class:`Algorithm` subclass under ``name``.

    Registering the same class again is a no-op (DDP workers and reloads re-import
    modules); registering a *different* class under a taken name is an error.
    """

    def wrap(cls: A) -> A:
        if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
            raise TypeError(f"@register_algorithm({name!r}) needs an Algorithm subclass, got {cls!r}")
        if not hasattr(cls, "data"):
            raise TypeError(f"{_qualified_name(cls)} must set the class variable `data`")
        existing = _REGISTRY.get(name)
        if existing is not None and _qualified_name(existing) != _qualified_name(cls):
            raise ValueError(
                f"algorithm name {name!r} is already registered by {_qualified_name(existing)}; "
                f"{_qualified_name(cls)} cannot take it"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def load_entry_points() -> None:
    """Import every plugin advertised in the ``lightning_rlhf.plugins`` group, once."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        cls = entry_point.load()
        registered = _REGISTRY.get(entry_point.name)
        if registered is None:
            # A plugin that skipped the decorator is still usable under its entry-point name.
            register_algorithm(entry_point.name)(cls)
        elif _qualified_name(registered) != _qualified_name(cls):
            raise ValueError(
                f"entry point {entry_point.name!r} -> {entry_point.value} names a class other "
                f"than the one registered under that name ({_qualified_name(registered)})"
            )


def get_algorithm(name: str) -> type[Algorithm]:
    load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownAlgorithmError(
            f"unknown algorithm {name!r}; registered algorithms are: {', '.join(sorted(_REGISTRY))}"
        ) from None


def create_algorithm(name: str, **hyperparameters) -> Algorithm:
    return get_algorithm(name)(**hyperparameters)


def create_algorithm_from_spec(spec: dict) -> Algorithm:
    """Build from ``{"class_path": name-or-import-path, "init_args": {...}}``."""
    name = spec["class_path"]
    if "." in name:
        from importlib import import_module

        module_name, _, class_name = name.rpartition(".")
        cls = getattr(import_module(module_name), class_name)
    else:
        cls = get_algorithm(name)
    return cls(**spec.get("init_args", {}))


def list_algorithms() -> dict[str, type[Algorithm]]:
    load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def class_path(name: str) -> str:
    """The import path of the class registered under ``name``."""
    return _qualified_name(get_algorithm(name))

"""Models the package can build in-process, named ``builtin:<name>`` in a recipe.

No machine this project is tested on reaches a model hub, so the tiny test model and the
toy world's models are built from code, written to a cache directory once, and then
loaded through the same ``from_pretrained`` path as any hub id or local directory.
"""

from __future__ import annotations

import functools
import importlib
import os
import random
import re
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

PREFIX = "builtin:"


@dataclass(frozen=True)
class Builtin:
    """Where a built-in model's builder lives, and whether it takes a ``seed``.

    The builder is named, not imported: the modules that hold builders (the toy world's
    among them) import this one to resolve the models they build on, so importing them
    here would make a cycle. It is imported when the model is first built.
    """

    target: str  # "package.module:function"; function(directory[, seed]) writes a transformers model + tokenizer there
    seedable: bool = False  # True: also ``builtin:<name>-seed<N>``, built with seed=N

    def build(self, directory: Path, **kwargs) -> None:
        module, _, function = self.target.partition(":")
        getattr(importlib.import_module(module), function)(directory, **kwargs)


_BUILDERS: dict[str, Builtin] = {
    "tiny-llama": Builtin("lightning_rlhf.models.tiny:write_tiny_llama"),
    "toyworld-pretrained": Builtin("lightning_rlhf.toyworld.models:write_pretrained", seedable=True),
    "toyworld": Builtin("lightning_rlhf.toyworld.models:write_sft", seedable=True),
    "toyworld-judge": Builtin("lightning_rlhf.toyworld.judge:write_judge", seedable=True),
    "arithmetic-pretrained": Builtin("lightning_rlhf.toyworld.models:write_arithmetic_pretrained", seedable=True),
    "arithmetic": Builtin("lightning_rlhf.toyworld.models:write_arithmetic_sft", seedable=True),
}


def register_builtin(name: str, target: str, seedable: bool = False) -> None:
    """Make ``builtin:<name>`` build with the function ``target`` ("package.module:function")."""
    _BUILDERS[name] = Builtin(target, seedable)


def cache_root() -> Path:
    """Where built models live: ``$LIGHTNING_RLHF_HOME`` or ``~/.cache/lightning-rlhf``."""
    root = os.environ.get("LIGHTNING_RLHF_HOME") or Path.home() / ".cache" / "lightning-rlhf"
    return Path(root)


def builtin_names() -> list[str]:
    return sorted(_BUILDERS)


def is_builtin(name_or_path: str) -> bool:
    return name_or_path.startswith(PREFIX)


def seeded(name: str, seed: int) -> str:
    """``builtin:toyworld`` built from another seed: ``builtin:toyworld-seed3`` (seed 0 is the
    plain name). For builders that take a ``seed``: the toy world's models."""
    return name if seed == 0 else f"{name}-seed{seed}"


def _builder(name: str, name_or_path: str) -> tuple[str, Callable[[Path], None]]:
    """The cache name (``x-seed0`` is ``x``) and the function that builds it."""
    if name in _BUILDERS:
        return name, _BUILDERS[name].build
    match = re.fullmatch(r"(.+)-seed(\d+)", name)
    if match and match[1] in _BUILDERS and _BUILDERS[match[1]].seedable:
        seed = int(match[2])
        return seeded(match[1], seed), functools.partial(_BUILDERS[match[1]].build, seed=seed)
    seedable = [n for n, builtin in sorted(_BUILDERS.items()) if builtin.seedable]
    raise ValueError(
        f"unknown built-in model {name_or_path!r}; built-in models are: "
        + ", ".join(PREFIX + n for n in sorted(_BUILDERS))
        + (f" (and {', '.join(PREFIX + n + '-seed<N>' for n in seedable)} for other seeds)" if seedable else "")
    )


def resolve(name_or_path: str) -> str:
    """Turn ``builtin:<name>`` into the directory holding it (building it on first use);
    anything else is returned unchanged for ``from_pretrained``."""
    if not is_builtin(name_or_path):
        return name_or_path
    name = name_or_path[len(PREFIX) :]
    name, build = _builder(name, name_or_path)
    directory = cache_root() / "models" / name
    done = directory / ".complete"
    if not done.exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        # Several DDP workers may ask for the same model at once: one builds, the rest wait.
        with FileLock(str(directory) + ".lock"):
            if not done.exists():
                directory.mkdir(parents=True, exist_ok=True)
                # Builders seed themselves; building on first use must not move the
                # caller's random streams (a seeded run would otherwise initialise, say,
                # a value head differently on the run that happened to build the model).
                with _caller_rng_preserved():
                    build(directory)
                done.touch()
    return str(directory)


@contextmanager
def _caller_rng_preserved():
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)

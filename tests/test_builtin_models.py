"""Built-in models: built once into the cache, then loaded like any local directory."""

from __future__ import annotations

import importlib
import inspect
import random

import numpy as np
import pytest
import torch

from lightning_rlhf.models import builtin


def test_building_a_model_on_first_use_leaves_the_callers_random_streams_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_RLHF_HOME", str(tmp_path))
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    expected = torch.rand(3), random.random(), np.random.rand()

    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    directory = builtin.resolve("builtin:tiny-llama")  # builds: the builder seeds itself
    assert (tmp_path / "models" / "tiny-llama" / ".complete").exists() and directory.startswith(str(tmp_path))
    torch.testing.assert_close(torch.rand(3), expected[0], rtol=0, atol=0)
    assert random.random() == expected[1] and np.random.rand() == expected[2]


def _write_seed(directory, seed=0):
    (directory / "seed.txt").write_text(str(seed))


def test_a_builder_that_takes_a_seed_is_built_per_seed_under_its_own_name(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_RLHF_HOME", str(tmp_path))
    monkeypatch.setitem(builtin._BUILDERS, "seedable", builtin.Builtin(f"{__name__}:_write_seed", seedable=True))
    assert builtin.seeded("builtin:seedable", 0) == "builtin:seedable"
    assert builtin.seeded("builtin:seedable", 3) == "builtin:seedable-seed3"
    assert builtin.resolve("builtin:seedable-seed0") == builtin.resolve("builtin:seedable")  # one cache entry
    for seed in (0, 3):
        directory = builtin.resolve(builtin.seeded("builtin:seedable", seed))
        assert (tmp_path / "models" / ("seedable" if seed == 0 else "seedable-seed3") / "seed.txt").read_text() == str(seed)
        assert directory.endswith("seedable" if seed == 0 else "seedable-seed3")


def test_a_seed_for_a_builder_without_one_is_an_error_naming_the_seedable_models():
    with pytest.raises(ValueError, match=r"unknown built-in model 'builtin:tiny-llama-seed1'.*builtin:toyworld-seed<N>"):
        builtin.resolve("builtin:tiny-llama-seed1")


def test_the_table_names_each_builder_and_says_truly_whether_it_takes_a_seed():
    # The table is written by hand beside the builders it names: a renamed builder, or a
    # seed parameter added or dropped, would otherwise show only when that model is built.
    for name, entry in builtin._BUILDERS.items():
        module, _, function = entry.target.partition(":")
        build = getattr(importlib.import_module(module), function)
        assert ("seed" in inspect.signature(build).parameters) == entry.seedable, name

"""Built-in models: built once into the cache, then loaded like any local directory."""

from __future__ import annotations

import random

import numpy as np
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

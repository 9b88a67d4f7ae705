"""One contract test over every registered plugin: a new plugin is tested by registering it."""

import pytest
import torch

from lightning_rlhf import list_algorithms
from lightning_rlhf.testing import check_algorithm


@pytest.mark.parametrize("name", sorted(list_algorithms()))
def test_plugin_contract(name):
    torch.manual_seed(0)
    cls = list_algorithms()[name]
    out = check_algorithm(cls())
    assert out.metrics, f"{name} logs no metrics"

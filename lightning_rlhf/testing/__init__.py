"""Helpers for testing plugins, shipped so that a plugin author can check their own class:

    from lightning_rlhf.testing import check_algorithm
    check_algorithm(MyAlgorithm(beta=0.2))

It runs one loss on a tiny built-in model with a small batch of the plugin's data kind,
then the backward pass, and checks what every plugin must honour.

The submodules build on one another from the bottom: ``samples`` (rows, batches, a
policy module on the tiny model), ``reward`` and ``self_training`` (the harnesses of
those stages), then ``contract`` (``check_algorithm``). They import each other, never
this package, so that none waits on another to finish importing.
"""

from lightning_rlhf.rewards.rules import letter_e_reward  # its old home: recipes may still name it here
from lightning_rlhf.testing.contract import check_algorithm
from lightning_rlhf.testing.samples import SAMPLE_ROWS, TINY_MODEL, data_module_for, make_batch, make_policy_module

__all__ = [
    "SAMPLE_ROWS",
    "TINY_MODEL",
    "check_algorithm",
    "data_module_for",
    "letter_e_reward",
    "make_batch",
    "make_policy_module",
]

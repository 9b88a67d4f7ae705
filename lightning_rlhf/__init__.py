"""lightning-rlhf: align language models with preferences, on Lightning."""

import os

# PyTorch's OpenMP runtime (libgomp on Linux) makes a waiting thread spin at every barrier. On
# cores shared with another busy process the spinning thread takes the time the thread it
# waits for needs: on 2 cores beside one busy loop a DPO epoch took 1.96x its idle time and
# 1.66x its CPU time, sampling 2.4x; waiting passively, 1.16x and no more CPU, at no measured
# cost when idle (see README, "CPU runs"). The runtime reads this when torch loads, so it is
# set first; a value the user exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lightning_rlhf.algorithm import (
    Algorithm,
    Experience,
    LossOutput,
    OnlineAlgorithm,
    OnlineContext,
    PolicyContext,
    SequenceLogps,
)
from lightning_rlhf.registry import create_algorithm, get_algorithm, list_algorithms, register_algorithm

__version__ = "0.1.0"

__all__ = [
    "Algorithm",
    "Experience",
    "LossOutput",
    "OnlineAlgorithm",
    "OnlineContext",
    "OnlinePolicyModule",
    "PolicyContext",
    "PolicyModule",
    "RewardModule",
    "SequenceLogps",
    "create_algorithm",
    "get_algorithm",
    "list_algorithms",
    "register_algorithm",
]


def __getattr__(name: str):
    # The modules pull in Lightning and transformers; plugins that only need the base
    # classes above should not pay for that on import.
    if name == "PolicyModule":
        from lightning_rlhf.modules.policy import PolicyModule

        return PolicyModule
    if name == "OnlinePolicyModule":
        from lightning_rlhf.modules.online_policy import OnlinePolicyModule

        return OnlinePolicyModule
    if name == "RewardModule":
        from lightning_rlhf.modules.reward_module import RewardModule

        return RewardModule
    raise AttributeError(name)

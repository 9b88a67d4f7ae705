"""lightning-rlhf: align language models with preferences, on Lightning."""


# PyTorch's OpenMP threads spin while they wait at a barrier: fastest when the cores are this
# process's, slowest beside another busy process. The runtime reads OMP_WAIT_POLICY when torch
# loads, so it is chosen first, by a look at the machine (lightning_rlhf.wait_policy; a value
# the user exported wins).
from lightning_rlhf import wait_policy

wait_policy.apply()

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

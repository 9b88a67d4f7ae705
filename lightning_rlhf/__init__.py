"""lightning-rlhf: align language models with preferences, on Lightning."""

from lightning_rlhf.algorithm import Algorithm, Experience, LossOutput, OnlineAlgorithm, SequenceLogps
from lightning_rlhf.registry import create_algorithm, get_algorithm, list_algorithms, register_algorithm

__version__ = "0.1.0"

__all__ = [
    "Algorithm",
    "Experience",
    "LossOutput",
    "OnlineAlgorithm",
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
    if name == "RewardModule":
        from lightning_rlhf.modules.reward import RewardModule

        return RewardModule
    raise AttributeError(name)

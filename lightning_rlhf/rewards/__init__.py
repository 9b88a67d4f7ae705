from lightning_rlhf.rewards.base import FunctionReward, RewardSource

__all__ = ["FunctionReward", "RewardSource"]

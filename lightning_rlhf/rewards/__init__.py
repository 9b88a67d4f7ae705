from lightning_rlhf.rewards.base import FunctionReward, RewardSource
from lightning_rlhf.rewards.composite import SafetyGatedReward, WeightedSum
from lightning_rlhf.rewards.gold import GoldReward
from lightning_rlhf.rewards.judge import JudgeReward, PairwiseJudge
from lightning_rlhf.rewards.online_prm import OnlineImplicitPRM
from lightning_rlhf.rewards.reward_model_source import RewardModelSource
from lightning_rlhf.rewards.remote import RemoteReward, RewardServerUnavailable
from lightning_rlhf.rewards.spec import load_reward_source
from lightning_rlhf.rewards.steps import StepRewardSource

__all__ = [
    "FunctionReward",
    "GoldReward",
    "JudgeReward",
    "OnlineImplicitPRM",
    "PairwiseJudge",
    "RemoteReward",
    "RewardModelSource",
    "RewardServerUnavailable",
    "RewardSource",
    "SafetyGatedReward",
    "StepRewardSource",
    "WeightedSum",
    "load_reward_source",
]

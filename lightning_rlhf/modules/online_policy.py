"""OnlinePolicyModule: trains a causal LM with an online plugin (PPO, the GRPO family, RLOO,
REINFORCE++, online DPO) on its own samples.

The shared machinery (the policy, the reference, log-probs, sampling and scoring,
checkpoints and export) is :class:`~lightning_rlhf.modules.policy_base.PolicyModuleBase`'s;
the rollout loop, the critic and what else an online plugin may call
(:class:`~lightning_rlhf.algorithm.OnlineContext`) are
:class:`~lightning_rlhf.modules.online.OnlineMixin`'s. This file joins them and holds the
online settings.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lightning_rlhf.algorithm import OnlineAlgorithm, check_data_kind
from lightning_rlhf.models.critic import CriticSettings
from lightning_rlhf.models.dropout import disable_dropout
from lightning_rlhf.modules.online import OnlineMixin, OnlineSettings
from lightning_rlhf.modules.policy_base import PolicyModuleBase, algorithm_argument
from lightning_rlhf.modules.settings import from_plain, to_plain
from lightning_rlhf.modules.sharded import check_strategy
from lightning_rlhf.rewards.base import RewardSource


class OnlinePolicyModule(OnlineMixin, PolicyModuleBase):
    def __init__(
        self,
        *args: Any,
        critic: CriticSettings | None = None,
        online: OnlineSettings | None = None,
        monitor: dict[str, str] | None = None,
        **kwargs: Any,
    ):
        """
        Args:
            critic: the value model of algorithms that need one (see ``models.critic``)
            online: the online loop's micro-batching, clipping and sample tables
            monitor: rewards that score the same samples for the log only, never trained on:
                name -> reward source shorthand (``{gold: gold}``), logged as
                ``train/monitor/<name>`` and ``val/monitor/<name>``. Beside a reward model,
                the gold reward shows over-optimisation: ``train/reward`` climbing while
                ``train/monitor/gold`` does not
        """
        # The settings both policy modules take (policy, algorithm: here an online plugin,
        # ``class_path: ppo``, reference, ...) are PolicyModuleBase's, passed on in ``args`` and
        # ``kwargs``; jsonargparse follows them there.
        algorithm = algorithm_argument(args, kwargs)
        if not isinstance(algorithm, OnlineAlgorithm):
            raise TypeError(f"algorithm {algorithm.name!r} is not online: train it with lightning_rlhf.PolicyModule")
        online = online or OnlineSettings()
        own = to_plain(OnlinePolicyModule.__init__, locals())
        super().__init__(*args, generation_batch_size=online.generation_batch_size, hparams=own, **kwargs)
        # Generate, score and update inside one step: manual optimisation.
        self.automatic_optimization = False
        self.critic_settings = critic
        self.online_settings = online
        if online.share_prompt and self.policy_settings.gradient_checkpointing:
            raise ValueError("online.share_prompt runs the samples on their prompts' KV cache, which gradient "
                             "checkpointing drops (transformers' layers refuse a cache under it): turn one of them off")
        self.value_model = None
        self.value_head = None
        self._captured_hidden: list[Tensor] | None = None  # the policy's last hidden states, for a value head
        self.monitor_sources = _monitor_sources(monitor)

    def configure_other_models(self) -> None:
        if self.algorithm.needs_value:
            self.configure_critic()
            if self.disable_dropout and self.value_model is not None:
                # V_old (rollout) and V (update) must be the same function of the weights
                disable_dropout(self.value_model)

    def reward_sources(self) -> dict:
        """The reward trained on and each monitored one (``monitor/<name>``): all are
        checkpointed and frozen for validation alike."""
        return {**super().reward_sources(), **{f"monitor/{name}": source for name, source in self.monitor_sources.items()}}

    @classmethod
    def arguments_from_hparams(cls, hparams: dict) -> dict[str, Any]:
        return {**super().arguments_from_hparams(hparams), **from_plain(OnlinePolicyModule.__init__, hparams)}

    def setup(self, stage: str) -> None:
        check_data_kind(self.algorithm, getattr(self.trainer, "datamodule", None))
        check_strategy(self.trainer.strategy, online=True, export_dir=self.export_dir)
        self.connect(getattr(self.trainer, "datamodule", None))

    # -- the loop (modules/online.py) -----------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        return self.online_training_step(batch, batch_idx)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        return self.online_validation_step(batch, batch_idx)

    def configure_optimizers(self):
        return self.configure_online_optimizers()


def _monitor_sources(monitor: dict[str, str] | None) -> dict[str, RewardSource]:
    from lightning_rlhf.rewards.spec import load_reward_source

    sources = {}
    for name, spec in (monitor or {}).items():
        if "/" in name or not name:
            raise ValueError(f"monitor: {name!r} is not a metric name (no '/', not empty)")
        sources[name] = load_reward_source(spec)
    return sources

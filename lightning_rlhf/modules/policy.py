"""PolicyModule: trains a causal LM with an offline objective its algorithm plugin defines
(SFT, the DPO family, KTO, ...) or a self-training plugin's phases (rejection sampling, ReST).

The module owns the policy, the frozen reference (when the plugin needs one), the
optimiser and the loop; it lends the plugin log-probabilities and nothing else (a
self-training plugin's Grow phase also samples with ``generate`` and scores with
``reward``). Online plugins (PPO, the GRPO family, online DPO) train on
:class:`~lightning_rlhf.modules.online_policy.OnlinePolicyModule`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_rlhf.algorithm import Algorithm, OnlineAlgorithm, check_data_kind
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.modules.online_policy import OnlinePolicyModule
from lightning_rlhf.modules.optim import OptimizerSettings
from lightning_rlhf.modules.policy_base import PolicyModuleBase, export_policy
from lightning_rlhf.modules.sharded import check_strategy
from lightning_rlhf.reference_cache import attach_to_fit
from lightning_rlhf.rewards.base import RewardSource

__all__ = ["PolicyModule", "export_policy"]


class PolicyModule(PolicyModuleBase):
    @classmethod
    def _hand_over(cls, algorithm: Algorithm | None) -> type[PolicyModuleBase] | None:
        # Code written before the online module had its own class builds
        # ``PolicyModule(policy, ppo, reward=..., online=...)``: it gets the online module.
        return OnlinePolicyModule if cls is PolicyModule and isinstance(algorithm, OnlineAlgorithm) else None

    def __init__(
        self,
        policy: ModelSettings,
        algorithm: Algorithm,
        reference: ModelSettings | None = None,
        optimizer: OptimizerSettings | None = None,
        logps_chunk_size: int = 1024,
        cache_reference_logps: bool = True,
        compile_policy: bool = False,
        disable_dropout: bool = True,
        export_dir: str | None = None,
        export_merged: bool = True,
        reward: RewardSource | None = None,
        generation_batch_size: int = 64,
    ):
        """
        Args:
            policy: the model to train
            algorithm: the objective, a registered plugin (``class_path: dpo``); an online
                plugin (ppo, grpo, ...) trains on ``lightning_rlhf.OnlinePolicyModule``
            reference: the frozen reference model, for plugins that need one. Default: the
                policy with its LoRA adapters disabled if it has them, else a frozen copy of
                the policy's starting weights
            optimizer: AdamW and learning-rate schedule settings
            logps_chunk_size: positions per chunk when applying the output head
            cache_reference_logps: compute the reference's log-probs once per training and
                validation sequence when fit starts and reuse them every epoch, instead of a
                reference forward at every step (see ``lightning_rlhf.reference_cache``)
            compile_policy: ``torch.compile`` the policy's transformer (dynamic shapes), fusing
                its element-wise work (norms, rotary embedding, activations, residuals); the
                first step pays the compilation (about a minute for a 30M model on a small CPU;
                inductor keeps it on disk for later runs)
            disable_dropout: turn dropout off in the policy (``nn.Dropout`` and attention
                dropout), so chosen and rejected, policy and reference log-probs are each
                computed by the same function
            export_dir: when fit ends, save the policy here in Hugging Face format
            export_merged: merge LoRA adapters into the exported weights (else save the adapter)
            reward: what scores the samples of a self-training plugin's Grow phase
                (rejection_sampling, rest): ``class_path: lightning_rlhf.rewards.FunctionReward``, ...
            generation_batch_size: prompts decoded together while a Grow phase samples
        """
        super().__init__(
            policy, algorithm, reference, optimizer, logps_chunk_size, compile_policy, disable_dropout,
            export_dir, export_merged, reward, generation_batch_size,
            hparams={"cache_reference_logps": cache_reference_logps, "generation_batch_size": generation_batch_size},
        )
        if isinstance(algorithm, OnlineAlgorithm):
            raise TypeError(f"algorithm {algorithm.name!r} is online: train it with lightning_rlhf.OnlinePolicyModule")
        self.cache_reference_logps = cache_reference_logps

    @classmethod
    def arguments_from_hparams(cls, hparams: dict) -> dict[str, Any]:
        # (a checkpoint written before the split kept the Grow batch size in ``online``)
        generation_batch_size = hparams.get("generation_batch_size") or (hparams.get("online") or {}).get("generation_batch_size", 64)
        return {**super().arguments_from_hparams(hparams), "cache_reference_logps": hparams.get("cache_reference_logps", True),
                "generation_batch_size": generation_batch_size}

    @classmethod
    def from_hparams(cls, hparams: dict) -> PolicyModuleBase:
        """Rebuild a module from the hyperparameters stored in its checkpoint (an online
        plugin's, written by ``PolicyModule`` before the split, comes back online)."""
        arguments = cls.arguments_from_hparams(hparams)
        if cls is PolicyModule and isinstance(arguments["algorithm"], OnlineAlgorithm):
            return OnlinePolicyModule.from_hparams(hparams)
        return cls(**arguments)

    def setup(self, stage: str) -> None:
        check_data_kind(self.algorithm, getattr(self.trainer, "datamodule", None))
        check_strategy(self.trainer.strategy, online=False, export_dir=self.export_dir)
        self.connect(getattr(self.trainer, "datamodule", None))

    # -- the loop -------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if "loss_tokens" in batch:  # this process's tokens in the accumulation window (data.step_tokens)
            batch["loss_tokens"] = self.loss_token_divisor(batch["loss_tokens"], self.trainer.accumulate_grad_batches)
        out = self.algorithm.loss(self, batch)
        batch_size = batch["input_ids"].shape[0]
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in out.metrics.items()}, batch_size=batch_size)
        return out.loss

    def loss_token_divisor(self, tokens: Tensor, micro_batches: int = 1) -> Tensor:
        """What a token-summed loss divides by for its optimiser step to train on the exact
        token mean of the step over every process: ``N_step / (W * micro_batches)``.

        ``tokens`` is this process's count over the step's micro-batches; summed over the
        ``W`` processes it is ``N_step``. DDP, FSDP and DeepSpeed average gradients over
        processes, and Lightning divides each micro-batch's loss by
        ``accumulate_grad_batches``: the divisor gives back both factors (see
        ``data.step_tokens``). One process, no accumulation: the batch's own count.
        """
        total = self.trainer.strategy.reduce(tokens.to(torch.float32, copy=True), reduce_op="sum")
        return total.clamp(min=1) / (self.trainer.world_size * micro_batches)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self.algorithm.loss(self, batch)
        batch_size = batch["input_ids"].shape[0]
        self.log("val/loss", out.loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in out.metrics.items()}, batch_size=batch_size, sync_dist=True)

    def configure_optimizers(self):
        return self.optimizer_settings.build(self.policy.parameters(), int(self.trainer.estimated_stepping_batches))

    def on_fit_start(self) -> None:
        if self.cache_reference_logps and self.algorithm.needs_reference:
            attach_to_fit(self, self.trainer.datamodule)  # before the data loaders draw their first batch

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
from lightning_rlhf.modules.online_policy import OnlinePolicyModule
from lightning_rlhf.modules.policy_base import PolicyModuleBase, export_policy
from lightning_rlhf.modules.settings import from_plain, to_plain
from lightning_rlhf.modules.sharded import check_strategy
from lightning_rlhf.reference_cache import attach_to_fit

__all__ = ["PolicyModule", "export_policy"]


class PolicyModule(PolicyModuleBase):
    @classmethod
    def _hand_over(cls, algorithm: Algorithm | None) -> type[PolicyModuleBase] | None:
        # Code written before the online module had its own class builds
        # ``PolicyModule(policy, ppo, reward=..., online=...)``: it gets the online module.
        return OnlinePolicyModule if cls is PolicyModule and isinstance(algorithm, OnlineAlgorithm) else None

    def __init__(
        self,
        *args: Any,
        cache_reference_logps: bool = True,
        generation_batch_size: int = 64,
        **kwargs: Any,
    ):
        """
        Args:
            cache_reference_logps: compute the reference's log-probs once per training and
                validation sequence when fit starts and reuse them every epoch, instead of a
                reference forward at every step (see ``lightning_rlhf.reference_cache``)
            generation_batch_size: prompts decoded together while a self-training plugin's
                Grow phase samples
        """
        # The settings both policy modules take (policy, algorithm, reference, ...) are
        # PolicyModuleBase's, passed on in ``args`` and ``kwargs``; jsonargparse follows them there.
        own = to_plain(PolicyModule.__init__, locals())
        super().__init__(*args, generation_batch_size=generation_batch_size, hparams=own, **kwargs)
        if isinstance(self.algorithm, OnlineAlgorithm):
            raise TypeError(f"algorithm {self.algorithm.name!r} is online: train it with lightning_rlhf.OnlinePolicyModule")
        self.cache_reference_logps = cache_reference_logps

    @classmethod
    def arguments_from_hparams(cls, hparams: dict) -> dict[str, Any]:
        arguments = {**super().arguments_from_hparams(hparams), **from_plain(PolicyModule.__init__, hparams)}
        if not hparams.get("generation_batch_size"):  # a checkpoint written before the split kept it in ``online``
            arguments["generation_batch_size"] = (hparams.get("online") or {}).get("generation_batch_size", 64)
        return arguments

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

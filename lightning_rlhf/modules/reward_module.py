"""RewardModule: trains a scalar reward model with whatever objective its plugin defines.

Step 2 of the InstructGPT / Llama 2 pipeline. The module owns the reward model (an LM
backbone with a scalar ``score`` head, see ``models.reward_head``), the optimiser, the loop
and the metrics; it lends the plugin one thing, ``rewards(batch)``: a scalar per row.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_rlhf.algorithm import Algorithm, check_data_kind
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.models.loading import load_tokenizer
from lightning_rlhf.models.reward_head import load_reward_model, position_rewards, sequence_rewards
from lightning_rlhf.modules.optim import OptimizerSettings
from lightning_rlhf.models.dropout import disable_dropout
from lightning_rlhf.modules.policy_base import export_policy
from lightning_rlhf.modules.sharded import check_strategy, full_weights, loading_into_shards
from lightning_rlhf.modules.reward_metrics import RewardMetrics, StepMetrics
from lightning_rlhf.modules.settings import from_plain, to_plain

log = logging.getLogger(__name__)


class RewardModule(L.LightningModule):
    def __init__(
        self,
        reward_model: ModelSettings,
        algorithm: Algorithm,
        optimizer: OptimizerSettings | None = None,
        disable_dropout: bool = True,
        export_dir: str | None = None,
        export_merged: bool = True,
    ):
        """
        Args:
            reward_model: the backbone (a causal LM gets a fresh scalar head) or an
                existing reward model to go on training
            algorithm: the objective, a registered reward-stage plugin (``class_path: bradley_terry``)
            optimizer: AdamW and learning-rate schedule settings
            disable_dropout: turn dropout off, so the two answers of a pair are scored by
                the same function
            export_dir: when fit ends, save the reward model here in Hugging Face format
                (loadable with ``AutoModelForSequenceClassification``)
            export_merged: merge LoRA adapters into the exported weights (else save the
                adapter, with the score head)
        """
        super().__init__()
        if algorithm.stage != "reward":
            raise ValueError(
                f"algorithm {algorithm.name or type(algorithm).__name__!r} is a {algorithm.stage}-stage "
                "objective; RewardModule trains reward-stage ones (train it with PolicyModule)"
            )
        # Plain data only, so a checkpoint loads with torch.load(weights_only=True) and the
        # run config in W&B reads like the recipe (locals() holds exactly the arguments here).
        self.save_hyperparameters(to_plain(RewardModule.__init__, locals()))
        self.reward_model_settings = reward_model
        self.algorithm = algorithm
        self.optimizer_settings = optimizer or OptimizerSettings()
        self.disable_dropout = disable_dropout
        self.export_dir, self.export_merged = export_dir, export_merged
        self.tokenizer = load_tokenizer(reward_model)
        self.reward_model: torch.nn.Module | None = None
        metrics = StepMetrics if algorithm.scores_steps else RewardMetrics
        self.train_metrics, self.val_metrics = metrics(), metrics()
        self._last_rewards: Tensor | None = None

    # -- models -------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.reward_model is not None:
            return
        with loading_into_shards(self._trainer):  # DeepSpeed ZeRO-3 partitions weights as they load
            self.reward_model = load_reward_model(self.reward_model_settings, self.tokenizer, trainable=True,
                                                  per_token=self.algorithm.scores_steps)
        self.reward_model.train()
        if self.disable_dropout:
            disable_dropout(self.reward_model)

    @classmethod
    def from_hparams(cls, hparams: dict) -> RewardModule:
        """Rebuild a module from the hyperparameters stored in its checkpoint."""
        return cls(**from_plain(RewardModule.__init__, hparams))

    @classmethod
    def policy_from_checkpoint(cls, path: str | Path) -> RewardModule:
        """For ``export``: the reward model is all a RewardModule holds."""
        return cls.from_checkpoint(path)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> RewardModule:
        """Load a module, weights included, from a Lightning checkpoint."""
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        module = cls.from_hparams(checkpoint["hyper_parameters"])
        module.configure_model()
        module.load_state_dict(checkpoint["state_dict"])
        return module

    def setup(self, stage: str) -> None:
        check_data_kind(self.algorithm, getattr(self.trainer, "datamodule", None))
        check_strategy(self.trainer.strategy, export_dir=self.export_dir)
        self.connect(getattr(self.trainer, "datamodule", None))

    def connect(self, datamodule: Any) -> None:
        """Hand the data module the reward model's tokenizer (``TextDataModule.connect``);
        called from ``setup``, once Lightning has attached both."""
        if callable(getattr(datamodule, "connect", None)):
            datamodule.connect(self.tokenizer)

    # -- what plugins may use -------------------------------------------------------------
    def rewards(self, batch: dict[str, Tensor]) -> Tensor:
        """``[N]`` float32 reward of every row of the batch, in one forward pass (with grad).

        For preference batches rows are chosen[0..B) then rejected[B..2B); for ranking
        batches see ``data.ranking``. The step's metrics (accuracy, margin, reward
        statistics) are computed from the rewards of the last call, so a plugin calls
        this once per batch.
        """
        rewards = sequence_rewards(self.reward_model, batch["input_ids"], batch["attention_mask"])
        self._last_rewards = rewards.detach()  # the metrics reuse this forward
        return rewards

    def step_rewards(self, batch: dict[str, Tensor]) -> Tensor:
        """``[S]`` float32 score (a logit) at each step position of a step-labelled batch
        (``step_index``, see ``data.stepwise``), in one forward pass (with grad). The epoch's
        step metrics (accuracy, F1 of finding wrong steps) come from the last call."""
        scores = position_rewards(self.reward_model, batch["input_ids"], batch["attention_mask"], batch["step_index"])
        self._last_rewards = scores.detach()
        return scores

    # -- the loop -------------------------------------------------------------------------
    def _step(self, batch: dict[str, Tensor], split: str, metrics: RewardMetrics) -> Tensor:
        self._last_rewards = None
        out = self.algorithm.loss(self, batch)
        rows = batch["input_ids"].shape[0]
        on_step = split == "train"
        self.log(f"{split}/loss", out.loss.detach(), prog_bar=True, batch_size=rows, sync_dist=not on_step)
        self.log_dict({f"{split}/{k}": v for k, v in out.metrics.items()}, batch_size=rows, sync_dist=not on_step)
        if self._last_rewards is not None:
            metrics.update(batch, self._last_rewards)
            # Logged as Metric objects: Lightning accumulates them over the epoch, reduces
            # them across devices and resets them. Training logs the batch value too.
            for name, metric in metrics.items():
                self.log(f"{split}/{name}", metric, on_step=on_step, on_epoch=True, prog_bar=name == "accuracy")
        return out.loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_metrics)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val", self.val_metrics)

    def configure_optimizers(self):
        return self.optimizer_settings.build(
            self.reward_model.parameters(), int(self.trainer.estimated_stepping_batches)
        )

    def on_fit_end(self) -> None:
        if not self.export_dir:
            return
        with full_weights(self.trainer, self.reward_model):  # every process takes part in gathering shards
            if self.trainer.is_global_zero:
                self.save_pretrained(self.export_dir, merged=self.export_merged)

    # -- export ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, merged: bool = True) -> Path:
        """Write the reward model in Hugging Face format.

        Merged (default): ``AutoModelForSequenceClassification.from_pretrained(directory)``
        loads it (a process reward model: ``AutoModelForTokenClassification``, and
        ``StepRewardSource`` scores with it). Adapter (``merged=False``): a peft adapter with
        the score head, loaded with ``peft.AutoPeftModelForSequenceClassification`` or
        ``RewardModelSource``.
        """
        if self.tokenizer.pad_token_id == self.tokenizer.eos_token_id:
            log.warning(
                "the reward model's tokenizer pads with EOS: transformers' own forward reads the reward "
                "before a trailing EOS; score with lightning_rlhf.rewards.RewardModelSource, which reads "
                "it at the last non-padding token as training did"
            )
        return export_policy(self.reward_model, self.tokenizer, directory, merged)


def checkpoint_module_class(path: str | Path) -> type[L.LightningModule]:
    """The module that wrote a Lightning checkpoint: RewardModule's hyperparameters name a
    ``reward_model``, the policy modules' a ``policy`` (OnlinePolicyModule's with an online
    algorithm; ``PolicyModule.from_hparams`` hands such a checkpoint to it). Reads the file
    memory-mapped, so peeking costs nothing before the module loads it."""
    from lightning_rlhf.modules.policy import PolicyModule

    hparams = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {})
    return RewardModule if "reward_model" in hparams else PolicyModule

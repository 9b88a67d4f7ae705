"""RewardModule for an implicit process reward model (``models.implicit_prm``): the ``prm``
plugin's step loss on ``z_s = beta * log(pi_theta / pi_ref) over step s + bias`` instead of
on a classification head read at the step's end."""

from __future__ import annotations

import math
from pathlib import Path

from torch import Tensor
from transformers import AutoModelForCausalLM

from lightning_rlhf.algorithm import Algorithm
from lightning_rlhf.models import builtin
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.models.dropout import disable_dropout
from lightning_rlhf.models.implicit_prm import ImplicitStepScorer
from lightning_rlhf.models.loading import _check_exists, from_pretrained_kwargs, prepare_for_training
from lightning_rlhf.modules.optim import OptimizerSettings
from lightning_rlhf.modules.reward_module import RewardModule
from lightning_rlhf.modules.settings import from_plain


class ImplicitPRMModule(RewardModule):
    """Trains an implicit PRM with a step-scoring plugin (``prm``): the reward model is the
    causal LM ``reward_model`` and a frozen copy of it as the reference; with ``lora`` (and
    ``load_in_4bit``) only the adapters train, and the reference is the same model with them
    switched off, so the base is held once.

    The bias starts at the log-odds that minimise the plugin's loss for a constant score,
    ``log(n_right / (wrong_step_weight * n_wrong))`` over the training steps, so the LM's
    log-ratio has to explain only what a constant cannot (at a learning rate for the LM, a
    bias that starts at 0 would take thousands of steps to reach the base rate).
    """

    def __init__(self, reward_model: ModelSettings, algorithm: Algorithm, optimizer: OptimizerSettings | None = None,
                 disable_dropout: bool = True, export_dir: str | None = None, export_merged: bool = True,
                 beta: float = 1.0):
        """
        Args:
            reward_model: the causal LM to train into the PRM (the policy's SFT model)
            algorithm: a step-scoring reward plugin (``class_path: prm``)
            optimizer: AdamW and learning-rate schedule settings
            disable_dropout: turn dropout off
            export_dir: when fit ends, write the PRM here (``ImplicitStepScorer.save_pretrained``;
                ``rewards.StepRewardSource`` scores with it)
            export_merged: with LoRA, export pi_theta merged beside a copy of the base
                (two ``AutoModelForCausalLM`` directories); else the adapter alone, whose
                base is pi_ref (always so over a 4-bit base)
            beta: scale of the log-likelihood ratio (Yuan et al. 2024's beta)
        """
        if not getattr(algorithm, "scores_steps", False):
            raise ValueError(f"an implicit PRM scores steps; algorithm {algorithm.name or type(algorithm).__name__!r} "
                             "does not (use class_path: prm)")
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        super().__init__(reward_model, algorithm, optimizer, disable_dropout, export_dir, export_merged)
        self.beta = beta
        self.hparams["beta"] = beta  # RewardModule stores its own arguments; this one's is added

    @classmethod
    def from_hparams(cls, hparams: dict) -> ImplicitPRMModule:
        """Rebuild a module from the hyperparameters stored in its checkpoint."""
        return cls(**from_plain(ImplicitPRMModule.__init__, hparams))

    def configure_model(self) -> None:
        if self.reward_model is not None:
            return
        settings = self.reward_model_settings
        source = builtin.resolve(settings.name_or_path)
        _check_exists(settings, source)
        policy = prepare_for_training(AutoModelForCausalLM.from_pretrained(source, **from_pretrained_kwargs(settings)), settings)
        self.reward_model = ImplicitStepScorer(policy, beta=self.beta, bias=self._prior_log_odds())
        self.reward_model.train()
        if self.disable_dropout:
            disable_dropout(self.reward_model)

    def _prior_log_odds(self) -> float:
        """``log(n_right / (w * n_wrong))`` over the training rows' step labels, 0 without them."""
        rows = getattr(getattr(self._trainer, "datamodule", None), "train_rows", None) if self._trainer else None
        labels = [label for row in rows or [] for label in row.get("step_labels", [])]
        right, wrong = sum(labels), len(labels) - sum(labels)
        if not right or not wrong:
            return 0.0
        return math.log(right / (getattr(self.algorithm, "wrong_step_weight", 1.0) * wrong))

    def step_rewards(self, batch: dict[str, Tensor]) -> Tensor:
        scores = self.reward_model(batch["input_ids"], batch["attention_mask"], batch["step_start_index"], batch["step_index"])
        self._last_rewards = scores.detach()
        return scores

    def rewards(self, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError("an implicit PRM scores steps (step_rewards), not whole sequences")

    def configure_optimizers(self):
        return self.optimizer_settings.build(self.reward_model.parameters(), int(self.trainer.estimated_stepping_batches))

    def save_pretrained(self, directory: str | Path, merged: bool = True) -> Path:
        """pi_theta, pi_ref (``reference/``) and ``implicit_prm.json``, or with LoRA unmerged
        the adapter and ``implicit_prm.json``: ``rewards.StepRewardSource`` loads either."""
        return self.reward_model.save_pretrained(directory, self.tokenizer, merged=merged)

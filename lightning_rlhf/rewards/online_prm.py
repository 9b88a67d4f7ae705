"""An implicit process reward model trained online on the policy's own rollouts (PRIME).

Cui et al. 2025, "Process Reinforcement through Implicit Rewards" (PRIME, arXiv:2502.01456):
an implicit PRM (``models.implicit_prm``: a causal LM pi_phi beside its frozen starting
point pi_ref) needs no step labels. Every rollout it is updated on the rollout's
completions y with their outcome rewards r_o(y) in [0, 1] as labels, by the cross-entropy

    L_CE(phi) = -mean_y [ r_o(y) log sigmoid(beta * sum_t log pi_phi(y_t)/pi_ref(y_t))
                          + (1 - r_o(y)) log (1 - sigmoid(beta * sum_t log pi_phi(y_t)/pi_ref(y_t))) ]

(the sum over the completion's tokens), and only then, updated, gives every token its
process reward ``r_phi(y_t) = beta * log pi_phi(y_t | y_<t) / pi_ref(y_t | y_<t)``. Because
it is trained on the policy's current samples, a step the policy starts writing is in the
PRM's data from the next rollout on, where a PRM trained once on the SFT model's samples
never sees it (the README's collapse under a fixed implicit PRM).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_rlhf.models import builtin
from lightning_rlhf.models.dropout import disable_dropout
from lightning_rlhf.models.implicit_prm import ImplicitStepScorer
from lightning_rlhf.rewards.base import RewardSource


def outcome_loss(sequence_log_ratios: Tensor, outcomes: Tensor, beta: float) -> Tensor:
    """PRIME's PRM loss: binary cross-entropy of ``sigmoid(beta * sum_t log pi_phi/pi_ref)``
    (``sequence_log_ratios`` ``[N]``, the sum over each completion) against the outcome
    rewards ``[N]`` in [0, 1], the mean over completions."""
    return F.binary_cross_entropy_with_logits(beta * sequence_log_ratios, outcomes.to(sequence_log_ratios.dtype))


class OnlineImplicitPRM(RewardSource):
    """The outcome reward ``outcome`` (what calling the source returns) and an implicit PRM
    started from ``path`` that learns from it on every training rollout (PRIME).

    The online module's ``online_process_rewards`` (``grpo`` with ``online_process_rewards:
    true``) calls :meth:`update_and_score` once per rollout: one AdamW step of the PRM on the
    rollout's completions with their outcome rewards as labels (:func:`outcome_loss`), then
    per-token process rewards from the updated PRM. The PRM reads the policy's tokens, so
    it must share the policy's tokenizer (start it from the policy's SFT model, as PRIME
    does). Its weights and optimiser state are the source's :meth:`state_dict`, which the
    policy module saves in its checkpoints; while :attr:`training` is False (validation
    rollouts) it scores without learning.
    """

    reads_columns = True

    def __init__(
        self,
        outcome: RewardSource,
        path: str,
        beta: float = 0.05,
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0,
        device: str = "auto",
        dtype: str = "float32",
    ):
        """
        Args:
            outcome: the outcome reward, in [0, 1] (a verifier: 1 right, 0 wrong); the PRM's label
            path: the causal LM the PRM starts from, and its frozen reference (the policy's SFT
                model: ``builtin:arithmetic``, a directory or a hub id); its tokenizer must be the policy's
            beta: scale of the log-likelihood ratio (PRIME's beta, 0.05 there); the token process
                rewards are beta times the log-ratios, the outcome advantage is at most 1
            learning_rate: the PRM's AdamW learning rate (its own optimiser, one step per rollout)
            weight_decay: the PRM's AdamW weight decay
            max_grad_norm: clip the PRM's gradient norm before its step; None: no clipping
            device: ``auto`` (CUDA if there is one), ``cpu``, ``cuda``, ...
            dtype: float32 or bfloat16
        """
        if beta <= 0 or learning_rate <= 0:
            raise ValueError(f"beta and learning_rate must be positive, got {beta} and {learning_rate}")
        self.outcome, self.path, self.beta, self.learning_rate = outcome, path, beta, learning_rate
        self.weight_decay, self.max_grad_norm, self.device, self.dtype = weight_decay, max_grad_norm, device, dtype
        self._device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                    "cpu" if device == "auto" else device)
        source = builtin.resolve(path)
        lm = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype))
        disable_dropout(lm)  # the update's and the scoring's log-ratios must be one function of the weights
        self.model = ImplicitStepScorer(lm, beta=beta).to(self._device)
        self.model.bias.requires_grad_(False)  # PRIME's score has no bias: sigmoid(0) = 1/2 at the start
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.optimizer = torch.optim.AdamW(self.model.policy.parameters(), lr=learning_rate, weight_decay=weight_decay)

    def parts(self) -> dict[str, RewardSource]:
        return {"outcome": self.outcome}

    def score(self, prompts: Sequence[str], completions: Sequence[str], columns: list[dict] | None = None) -> Tensor:
        return self.outcome(prompts, completions, columns)

    def check_tokenizer(self, tokenizer) -> None:
        """Refuse a policy whose tokens the PRM would read as other words."""
        if tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(f"OnlineImplicitPRM path {self.path!r}: its tokenizer is not the policy's; the PRM scores "
                             "the policy's sampled tokens, so start it from the policy's model")

    def token_log_ratios(self, batch: dict[str, Tensor], reference: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(``[N, T-1]`` log pi_phi - log pi_ref of each completion token, aligned with
        ``policy_logps``, 0 off the completion; ``[N, T-1]`` log pi_ref), with grad through
        pi_phi when grad is enabled; ``reference``: log pi_ref already computed for ``batch``."""
        input_ids, attention_mask = batch["input_ids"].to(self._device), batch["attention_mask"].to(self._device)
        mask = batch["completion_mask"][:, 1:].to(self._device)
        if reference is None:
            with torch.no_grad():
                reference = self.model.token_logps(self.model.reference, input_ids, attention_mask)[:, 1:]
        policy = self.model.token_logps(self.model.policy, input_ids, attention_mask)[:, 1:]
        return (policy - reference) * mask, reference

    def update_and_score(self, batch: dict[str, Tensor], outcomes: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """PRIME's order: while training, one step of :func:`outcome_loss` on the rollout
        (``batch``: the rollout's tokens; ``outcomes`` ``[N]``, NaN: left out), then the updated
        PRM's ``[N, T-1]`` token process rewards ``beta * log pi_phi/pi_ref`` (no grad) and the
        update's metrics: the loss, and how often the PRM's verdict before the step
        (``sum_t log-ratio > 0``) matched the outcome."""
        outcomes = outcomes.to(self._device, torch.float32)
        scored = ~torch.isnan(outcomes)
        if ((outcomes[scored] < 0) | (outcomes[scored] > 1)).any():
            raise ValueError("OnlineImplicitPRM learns from outcome rewards in [0, 1] (its labels); the outcome reward "
                             f"gave {outcomes[scored].min().item()} .. {outcomes[scored].max().item()}")
        metrics, reference = {}, None
        if self.training and scored.any():
            with torch.enable_grad():  # the policy's rollout runs without grad; the PRM learns inside it
                ratios, reference = self.token_log_ratios(batch)
                sequence = ratios.sum(-1)[scored]
                loss = outcome_loss(sequence, outcomes[scored], self.beta)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
            if self.max_grad_norm is not None:
                metrics["prm/grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.policy.parameters(), self.max_grad_norm).detach()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            metrics["prm/loss"] = loss.detach()
            metrics["prm/outcome_accuracy"] = ((sequence.detach() > 0) == (outcomes[scored] > 0.5)).float().mean()
        with torch.no_grad():
            ratios, _ = self.token_log_ratios(batch, reference)
        return self.beta * ratios, {k: v.float().cpu() for k, v in metrics.items()}

    def state_dict(self) -> dict[str, Any]:
        """The outcome reward's state, the PRM's weights (pi_ref is rebuilt from ``path``) and
        its optimiser's state."""
        return {**super().state_dict(), "model": {k: v.detach().clone() for k, v in self.model.policy.state_dict().items()},
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        model, optimizer = state.pop("model"), state.pop("optimizer")
        super().load_state_dict(state)
        self.model.policy.load_state_dict(model)
        self.optimizer.load_state_dict(optimizer)

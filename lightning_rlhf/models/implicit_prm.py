"""An implicit process reward model: a step's score is how much more likely a fine-tuned
language model finds the step than the model it started from.

Yuan et al. 2024, "Free Process Rewards without Process Labels" (arXiv:2412.01981, eq. 3;
used by PRIME, Cui et al. 2025, arXiv:2502.01456): with a trained causal LM pi_theta and
its frozen starting point pi_ref, the reward of step s, tokens y_a .. y_b, is

    r_s = beta * sum_{t=a..b} [ log pi_theta(y_t | y_<t) - log pi_ref(y_t | y_<t) ]

Here it is trained on step labels: the step's logit is ``z_s = r_s + bias`` (one learned
scalar: the share of right steps) under the ``prm`` plugin's binary cross-entropy, so
``sigmoid(z_s)`` is the probability that step s is right, as for a classification-head PRM.

Why it learns where a head at the step's end does not: to check ``11+5=17.`` a head read
at ``.`` needs the model to redo the sum at that position, a computation the LM never had
to make there. The LM already makes it one token earlier: at ``=`` it predicts the total,
so ``log pi(17 | ...11+5=)`` already says whether 17 is the sum, and training only has to
sharpen that prediction. The same holds for any LM judged on steps it could have written.

Exported two ways. Full (a model trained in full, or LoRA merged): ``AutoModelForCausalLM``
twice (``transformers`` loads both), the export directory holds pi_theta, ``reference/``
holds pi_ref, and ``implicit_prm.json`` beta and the bias. Adapter (LoRA unmerged, and
always for a 4-bit base, whose LoRA cannot be merged): the directory is a peft adapter
over the base its ``adapter_config.json`` names, and pi_ref is that base with the adapter
switched off, loaded in 4 bits again when it was trained so (``implicit_prm.json`` says),
since the log-ratio was learned against the quantised base.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import torch
from torch import Tensor

from lightning_rlhf.models.loading import is_peft_model, unwrap
from lightning_rlhf.ops import completion_index, logit_multiplier, selective_logps

CONFIG_FILE = "implicit_prm.json"
REFERENCE_DIR = "reference"
ADAPTER_CONFIG = "adapter_config.json"  # peft's


class ImplicitStepScorer(torch.nn.Module):
    """``policy`` (trained) and ``reference`` (frozen, eval mode) causal LMs, ``beta`` and a
    learned ``bias``; :meth:`forward` gives every step's logit ``z_s``."""

    def __init__(self, policy: torch.nn.Module, reference: torch.nn.Module | None = None, beta: float = 1.0,
                 bias: float = 0.0, chunk_size: int = 1024, max_token_log_ratio: float | None = None):
        """
        Args:
            policy: the causal LM trained into the PRM (usually the policy's SFT model), or a
                peft model (LoRA, possibly over a 4-bit base)
            reference: its frozen starting point; None: a frozen copy of ``policy`` as it is
                now, or for a peft ``policy`` the policy itself with its adapters switched
                off (no second copy of the base)
            beta: scale of the log-likelihood ratio (Yuan et al.'s beta)
            bias: the logit's starting offset (learned)
            chunk_size: positions per chunk of the LM head (``ops.selective_logps``)
            max_token_log_ratio: cap on each token's log pi_theta - log pi_ref (None: no cap).
                At 0 a step can score only below the bias: a token that the fine-tuned LM
                made likelier counts for nothing. Why: training moves probability onto
                tokens no label ever judged (a wrong term, an early answer), and without a
                cap such a step outscores a right one, which RL finds (see the README)
        """
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.policy = policy
        if reference is None and is_peft_model(policy):
            self.reference = None  # pi_ref: the adapters switched off
        else:
            self.reference = reference if reference is not None else copy.deepcopy(policy)
            self.reference.requires_grad_(False).eval()
        self.beta, self.chunk_size, self.max_token_log_ratio = beta, chunk_size, max_token_log_ratio
        self.bias = torch.nn.Parameter(torch.tensor(float(bias)))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # frozen: no dropout, whatever the module's mode
        return self

    def token_logps(self, model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``[N, T]``: at t, log p(x_t | x_<t) under ``model``; 0 at t = 0 and on padding."""
        hf_model = unwrap(model)
        # Right-padded rows (data.collate): causal attention keeps real tokens from the pads.
        hidden = hf_model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                     use_cache=False).last_hidden_state
        logps = selective_logps(hidden, input_ids, completion_index(attention_mask.bool()), hf_model.get_output_embeddings(),
                                chunk_size=self.chunk_size,
                                logit_softcap=getattr(hf_model.config, "final_logit_softcapping", None),
                                temperature=1.0 / logit_multiplier(hf_model.config))
        return torch.cat([logps.new_zeros(logps.shape[0], 1), logps], dim=1)

    def step_log_ratios(self, input_ids: Tensor, attention_mask: Tensor, start_index: Tensor, end_index: Tensor) -> Tensor:
        """``[S]``: sum over each step's tokens (flat indices ``start_index .. end_index``
        into ``[N * T]``, both included) of log pi_theta - log pi_ref."""
        with torch.no_grad(), self._reference() as reference_model:
            reference = self.token_logps(reference_model, input_ids, attention_mask)
        ratio = self.token_logps(self.policy, input_ids, attention_mask) - reference
        if self.max_token_log_ratio is not None:
            ratio = ratio.clamp(max=self.max_token_log_ratio)
        # A step's sum as the difference of two running sums; a row's first token is BOS (no
        # step starts there), so start - 1 is in the same row.
        running = ratio.reshape(-1).cumsum(0)
        return running.index_select(0, end_index) - running.index_select(0, start_index - 1)

    @contextlib.contextmanager
    def _reference(self):
        if self.reference is not None:
            yield self.reference
        else:
            with self.policy.disable_adapter():
                yield self.policy

    def forward(self, input_ids: Tensor, attention_mask: Tensor, start_index: Tensor, end_index: Tensor) -> Tensor:
        """``[S]`` float32 logits ``z_s = beta * log-ratio of step s + bias``."""
        return self.beta * self.step_log_ratios(input_ids, attention_mask, start_index, end_index) + self.bias

    def save_pretrained(self, directory: str | Path, tokenizer=None, merged: bool = True) -> Path:
        """Beta and bias in ``implicit_prm.json``, and the LMs: pi_theta at ``directory`` and
        pi_ref in ``directory/reference``, each loading with ``AutoModelForCausalLM``; or,
        for a peft policy with ``merged=False`` or a 4-bit base, the adapter alone (its
        base is pi_ref)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"kind": "implicit_prm", "beta": self.beta, "bias": float(self.bias.detach()),
                  "max_token_log_ratio": self.max_token_log_ratio}
        if self.reference is not None:
            self.policy.save_pretrained(directory, safe_serialization=True)
            self.reference.save_pretrained(directory / REFERENCE_DIR, safe_serialization=True)
        elif merged and not getattr(unwrap(self.policy), "is_loaded_in_4bit", False):
            copy.deepcopy(self.policy).merge_and_unload().save_pretrained(directory, safe_serialization=True)
            copy.deepcopy(self.policy).unload().save_pretrained(directory / REFERENCE_DIR, safe_serialization=True)
        else:
            self.policy.save_pretrained(directory, safe_serialization=True)
            quantization = getattr(unwrap(self.policy).config, "quantization_config", None)
            if quantization is not None:  # pi_ref is the base as it was quantised in training
                config["quantization_config"] = quantization if isinstance(quantization, dict) else quantization.to_dict()
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype | str = torch.float32) -> ImplicitStepScorer:
        """Load what :meth:`save_pretrained` wrote, frozen, in eval mode (``implicit_prm.json``'s
        ``max_token_log_ratio`` may be edited after training: it changes only how steps score)."""
        from transformers import AutoModelForCausalLM

        directory = Path(directory)
        config = json.loads((directory / CONFIG_FILE).read_text())
        if (directory / ADAPTER_CONFIG).is_file():  # a peft adapter over its base: pi_ref is the base
            from peft import AutoPeftModelForCausalLM

            kwargs = {}
            if config.get("quantization_config"):
                from transformers import BitsAndBytesConfig

                kwargs["quantization_config"] = BitsAndBytesConfig.from_dict(config["quantization_config"])
            policy, reference = AutoPeftModelForCausalLM.from_pretrained(directory, dtype=dtype, **kwargs), None
        else:
            policy = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
            reference = AutoModelForCausalLM.from_pretrained(directory / REFERENCE_DIR, dtype=dtype)
        scorer = cls(policy, reference, beta=config["beta"], bias=config["bias"],
                     max_token_log_ratio=config.get("max_token_log_ratio"))
        return scorer.requires_grad_(False).eval()


def is_implicit_prm(path: str | Path) -> bool:
    """The directory holds an implicit PRM (written by :meth:`ImplicitStepScorer.save_pretrained`)."""
    return (Path(path) / CONFIG_FILE).is_file()

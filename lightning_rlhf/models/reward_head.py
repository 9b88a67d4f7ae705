"""Reward models: a transformers sequence-classification model with one output.

For a causal-LM checkpoint, ``AutoModelForSequenceClassification(num_labels=1)`` keeps
the LM backbone and puts a fresh linear ``score`` head where the vocabulary head was: the
InstructGPT / Llama 2 reward model. A checkpoint that already is a reward model keeps its
trained head.

The reward of a sequence is the head applied to the final hidden state of its *last
non-padding token*, found from the attention mask. transformers' own forward finds that
token as the last one that is not ``config.pad_token_id``, which goes wrong when the
tokenizer pads with EOS (common: Llama 3, Mistral) and the sequence ends with EOS; the
mask says what is padding whatever the pad id is. Both agree whenever pad != EOS.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, PreTrainedModel, PreTrainedTokenizerBase

from lightning_rlhf.models import builtin
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.models.loading import _check_exists, from_pretrained_kwargs, prepare_for_training, unwrap

log = logging.getLogger(__name__)

SCORE_HEAD = "score"


def load_reward_model(
    settings: ModelSettings, tokenizer: PreTrainedTokenizerBase, trainable: bool = True, per_token: bool = False
) -> PreTrainedModel:
    """Load a scalar reward model; with ``trainable`` apply LoRA/QLoRA and gradient
    checkpointing as the settings say (the score head is then trained in full and saved
    with the adapter), otherwise return it frozen in eval mode. ``per_token``: a token
    classifier with one output (a process reward model, scored at every step's end)."""
    source = builtin.resolve(settings.name_or_path)
    _check_exists(settings, source)
    _check_scalar_output(settings, source)
    auto = AutoModelForTokenClassification if per_token else AutoModelForSequenceClassification
    model = auto.from_pretrained(source, num_labels=1, **from_pretrained_kwargs(settings))
    if not hasattr(model, SCORE_HEAD):
        raise ValueError(
            f"{settings.name_or_path!r} loads as {type(model).__name__}, which has no `{SCORE_HEAD}` head; "
            "reward models are built on decoder (causal-LM) backbones"
        )
    # Written into the exported config, so that transformers' own forward pools at the
    # same token as here (see the module docstring for when that can differ).
    model.config.pad_token_id = tokenizer.pad_token_id
    if not trainable:
        model.requires_grad_(False)
        return model.eval()
    # Under LoRA the fresh head must be trained and saved with the adapter; peft's SEQ_CLS
    # task does that (it adds the head to modules_to_save) and keeps LoRA off the head.
    return prepare_for_training(model, settings, task_type="TOKEN_CLS" if per_token else "SEQ_CLS")


def _check_scalar_output(settings: ModelSettings, source: str) -> None:
    """A classifier with several outputs is not a reward model: say so, rather than let
    transformers fail on the head's shape (or, told to ignore it, silently re-initialise it)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, revision=settings.revision, trust_remote_code=settings.trust_remote_code)
    except OSError:
        return  # let from_pretrained report what is missing
    is_classifier = any(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in config.architectures or [])
    if is_classifier and config.num_labels != 1:
        raise ValueError(
            f"{settings.name_or_path!r} is a classifier with {config.num_labels} outputs (num_labels="
            f"{config.num_labels}); a reward model has one scalar output (num_labels=1)"
        )


def last_token_index(attention_mask: Tensor) -> Tensor:
    """``[N]`` position of the last attended token of each row; right or left padding."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def sequence_rewards(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """``[N]`` float32 rewards: the score head at each row's last non-padding token.

    The head is applied to N hidden states, not N*T as transformers' forward does.
    """
    hf_model = unwrap(model)
    backbone = getattr(hf_model, hf_model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]
    head = getattr(hf_model, SCORE_HEAD)
    return head(last.to(_head_dtype(head))).squeeze(-1).float()


def position_rewards(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, index: Tensor) -> Tensor:
    """``[S]`` float32 scores: the score head at the flat positions ``index`` of ``[N * T]``
    (a process reward model's step ends); the head sees S hidden states, not N*T."""
    hf_model = unwrap(model)
    backbone = getattr(hf_model, hf_model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
    head = getattr(hf_model, SCORE_HEAD)
    return head(picked.to(_head_dtype(head))).squeeze(-1).float()


def _head_dtype(head: torch.nn.Module) -> torch.dtype:
    # Under 4-bit loading the backbone may compute in bfloat16 while the head is float32.
    return next(head.parameters()).dtype

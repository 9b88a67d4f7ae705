"""Load causal LMs and tokenizers by hub id, local path or built-in name."""

from __future__ import annotations

import logging
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lightning_rlhf.models import builtin
from lightning_rlhf.models.config import LoraSettings, ModelSettings

log = logging.getLogger(__name__)


def _torch_dtype(name: str) -> torch.dtype | str:
    return name if name == "auto" else getattr(torch, name)


def _check_exists(settings: ModelSettings, source: str) -> None:
    """Fail early, with the recipe's name for it, on a local path that is not there.

    Anything shaped like a hub id (``name`` or ``org/name``) is left to transformers."""
    if os.path.exists(os.path.expanduser(source)):
        return
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise FileNotFoundError(f"model path {settings.name_or_path!r} does not exist")


def from_pretrained_kwargs(settings: ModelSettings) -> dict:
    kwargs: dict = {
        "revision": settings.revision,
        "dtype": _torch_dtype(settings.dtype),
        "trust_remote_code": settings.trust_remote_code,
        **settings.extra,
    }
    if settings.trust_remote_code:
        log.warning("trust_remote_code is ON for %s: its repository's Python code will run", settings.name_or_path)
    if settings.attn_implementation:
        kwargs["attn_implementation"] = settings.attn_implementation
    if settings.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=settings.bnb_4bit_quant_type,
            bnb_4bit_compute_dtype=getattr(torch, settings.bnb_4bit_compute_dtype),
            bnb_4bit_use_double_quant=settings.bnb_4bit_use_double_quant,
        )
    return kwargs


def load_tokenizer(settings: ModelSettings) -> PreTrainedTokenizerBase:
    source = builtin.resolve(settings.tokenizer or settings.name_or_path)
    _check_exists(settings, source)
    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=settings.revision, trust_remote_code=settings.trust_remote_code
    )
    if tokenizer.pad_token is None:
        # Padding is masked out everywhere, so any token will do; EOS is the usual choice.
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {settings.name_or_path!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("tokenizer of %s has no pad token; using EOS %r", settings.name_or_path, tokenizer.eos_token)
    return tokenizer


def load_causal_lm(settings: ModelSettings, trainable: bool = True) -> PreTrainedModel:
    """Load a causal LM; with ``trainable`` apply LoRA/QLoRA and gradient checkpointing as
    the settings say, otherwise return it frozen in eval mode."""
    source = builtin.resolve(settings.name_or_path)
    _check_exists(settings, source)
    model = AutoModelForCausalLM.from_pretrained(source, **from_pretrained_kwargs(settings))
    if not trainable:
        model.requires_grad_(False)
        return model.eval()
    return prepare_for_training(model, settings)


def prepare_for_training(model: PreTrainedModel, settings: ModelSettings, task_type: str = "CAUSAL_LM"):
    if settings.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=settings.gradient_checkpointing
        )
    elif settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if settings.gradient_checkpointing:
        model.config.use_cache = False
    if settings.lora is not None:
        model = apply_lora(model, settings.lora, task_type)
    return model


def apply_lora(model: PreTrainedModel, lora: LoraSettings, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        modules_to_save=lora.modules_to_save,
        task_type=task_type,
    )
    return get_peft_model(model, config)


def is_peft_model(model: torch.nn.Module) -> bool:
    # A peft model exists only once peft is imported; importing it to find out would cost
    # seconds (it imports bitsandbytes) on the first forward of every run without LoRA.
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def unwrap(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model inside a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if is_peft_model(model) else model

"""The ``model`` settings of a recipe: which weights, how to load them, what to adapt."""

from __future__ import annotations

from dataclasses import dataclass, field

_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class LoraSettings:
    """LoRA adapters through peft (Hu et al. 2021)."""

    r: int = 16
    """rank of the update matrices"""
    alpha: int = 32
    """scaling numerator: the update is scaled by alpha / r"""
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    """module names to adapt, or "all-linear" for every linear layer but the output head"""
    modules_to_save: list[str] | None = None
    """modules trained in full and saved with the adapter (e.g. a reward model's score head)"""

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"lora.r must be positive, got {self.r}")


@dataclass
class ModelSettings:
    """Where a model comes from and how it is loaded."""

    name_or_path: str
    """a hub id, a local directory, or builtin:<name> for a model this package builds"""
    revision: str | None = None
    tokenizer: str | None = None
    """tokenizer hub id or path; defaults to name_or_path"""
    dtype: str = "auto"
    """weights' dtype: auto (as stored), float32, bfloat16 or float16"""
    lora: LoraSettings | None = None
    load_in_4bit: bool = False
    """QLoRA: load the base weights quantised to 4-bit NF4 with bitsandbytes"""
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_compute_dtype: str = "bfloat16"
    bnb_4bit_use_double_quant: bool = True
    trust_remote_code: bool = False
    """run the model repository's own Python code; off unless the recipe turns it on"""
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None
    """e.g. sdpa, eager, flash_attention_2; None lets transformers choose"""
    extra: dict = field(default_factory=dict)
    """further keyword arguments for from_pretrained"""

    @classmethod
    def from_dict(cls, values: dict) -> ModelSettings:
        values = dict(values)
        if isinstance(values.get("lora"), dict):
            values["lora"] = LoraSettings(**values["lora"])
        return cls(**values)

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"model dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.load_in_4bit and self.lora is None:
            raise ValueError("load_in_4bit needs lora settings: 4-bit weights cannot be trained directly")

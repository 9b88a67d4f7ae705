"""Sample rows of each data kind, and the batches and modules built from them on the tiny
built-in model: what the contract check (``lightning_rlhf.testing.contract``) and the
tests run a plugin on."""

from __future__ import annotations

from lightning_rlhf.algorithm import Algorithm

# A few rows of each data kind, in the formats users write.
SAMPLE_ROWS: dict[str, list[dict]] = {
    "sft": [
        {"prompt": "How was the film?", "completion": " It was lovely."},
        {"prompt": "Name a colour.", "completion": " Blue."},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}]},
    ],
    "preference": [
        {"prompt": "How was the film?", "chosen": " It was lovely.", "rejected": " It was dull.", "margin": 1.0},
        {"prompt": "Name a colour.", "chosen": " Blue.", "rejected": " Seven.", "margin": 0.5},
        {
            "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}],
            "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}],
        },
    ],
    "ranking": [
        {"prompt": "How was the film?", "completions": [" It was lovely.", " It was fine.", " It was dull."]},
        {"prompt": "Name a colour.", "completions": [" Seven.", " Blue."], "scores": [0.1, 0.9]},
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "completions": [
                [{"role": "assistant", "content": "Hello there!"}],
                [{"role": "assistant", "content": "Hi."}],
                [{"role": "assistant", "content": "Go away."}],
            ],
            "scores": [2.0, 2.0, -1.0],
        },
    ],
    "unpaired": [
        {"prompt": "How was the film?", "completion": " It was lovely.", "label": True},
        {"prompt": "Name a colour.", "completion": " Seven.", "label": "false"},
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "completion": [{"role": "assistant", "content": "Hello there!"}],
            "label": "True",
        },
        {"prompt": "Say something kind.", "completion": " Go away.", "label": False},
    ],
    "stepwise": [
        {"prompt": "What is 4+7+2?", "completions": [" 4+7=11", " 11+2=13", " Answer: 13"], "labels": [True, True, True]},
        {"prompt": "What is 5+1+3?", "completions": [" 5+1=7", " 7+3=10", " Answer: 10"], "labels": [False, True, 1]},
    ],
    "prompt": [
        {"prompt": "How was the film?"},
        {"prompt": "Name a colour."},
        {"prompt": [{"role": "user", "content": "Hi"}]},
    ],
}

TINY_MODEL = "builtin:tiny-llama"


def data_module_for(kind: str):
    from lightning_rlhf.data import DATA_MODULES

    if kind not in DATA_MODULES:
        raise ValueError(f"no data module reads {kind!r} data; known kinds: {sorted(DATA_MODULES)}")
    return DATA_MODULES[kind]


def make_batch(kind: str, tokenizer, rows: list[dict] | None = None, max_length: int = 64) -> dict:
    """Tokenise and collate sample rows exactly as the data module of ``kind`` does."""
    from lightning_rlhf.data.formats import RowChecker
    from lightning_rlhf.data.tokenize import Tokenization

    module = data_module_for(kind)(path="<sample>", max_length=max_length)
    module.tokenizer = tokenizer
    tokenization = Tokenization(tokenizer, max_length)
    encoded = []
    for row, record in enumerate(rows or SAMPLE_ROWS[kind], start=1):
        example = module.parse(RowChecker("<sample>", row, record))
        item = module.encode(example, tokenization)
        if item is not None:
            encoded.append(item)
    return module.collator()(encoded)


def make_policy_module(algorithm: Algorithm, model: str = TINY_MODEL, **kwargs):
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.algorithm import OnlineAlgorithm
    from lightning_rlhf.modules.online_policy import OnlinePolicyModule
    from lightning_rlhf.modules.policy import PolicyModule

    module_class = OnlinePolicyModule if isinstance(algorithm, OnlineAlgorithm) else PolicyModule
    module = module_class(ModelSettings(name_or_path=model), algorithm, **kwargs)
    module.configure_model()
    return module

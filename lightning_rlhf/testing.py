"""Helpers for testing plugins, shipped so that a plugin author can check their own class:

    from lightning_rlhf.testing import check_algorithm
    check_algorithm(MyAlgorithm(beta=0.2))

It runs one loss on a tiny built-in model with a small batch of the plugin's data kind,
then the backward pass, and checks what every plugin must honour.
"""

from __future__ import annotations

import inspect

import torch

from lightning_rlhf.algorithm import Algorithm, Experience, LossOutput, OnlineAlgorithm, hyperparameters
from lightning_rlhf.self_training import SelfTrainingAlgorithm

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
    "prompt": [
        {"prompt": "How was the film?"},
        {"prompt": "Name a colour."},
        {"prompt": [{"role": "user", "content": "Hi"}]},
    ],
}


def letter_e_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """A rule reward for online plugins' tests: how many letters "e" a completion has."""
    return [float(c.count("e")) for c in completions]

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
    from lightning_rlhf.modules.policy import PolicyModule

    module = PolicyModule(ModelSettings(name_or_path=model), algorithm, **kwargs)
    module.configure_model()
    return module


def check_algorithm(algorithm: Algorithm) -> LossOutput:
    """Assert the plugin contract on ``algorithm``; returns the loss output it produced."""
    cls = type(algorithm)
    assert isinstance(algorithm, Algorithm), f"{cls.__name__} must subclass lightning_rlhf.Algorithm"
    _check_signature(algorithm)
    if cls.stage == "reward":
        from lightning_rlhf.testing_reward import run_reward_algorithm  # the reward stage's own harness

        module, out = run_reward_algorithm(algorithm)
    elif isinstance(algorithm, SelfTrainingAlgorithm):
        from lightning_rlhf.testing_self_training import run_self_training_algorithm  # grow, select, then the loss

        module, out = run_self_training_algorithm(algorithm)
    elif isinstance(algorithm, OnlineAlgorithm):
        from lightning_rlhf.rewards import FunctionReward

        # Online: one rollout on the tiny model scored by a rule, then the loss on its first minibatch.
        module = make_policy_module(algorithm, reward=FunctionReward("lightning_rlhf.testing.letter_e_reward"))
        experience = algorithm.rollout(module, make_batch(cls.data, module.tokenizer))
        assert isinstance(experience, Experience), f"{cls.__name__}.rollout must return an Experience"
        out = algorithm.loss(module, next(iter(algorithm.minibatches(experience))))
    else:
        module = make_policy_module(algorithm)
        batch = make_batch(cls.data, module.tokenizer)
        out = algorithm.loss(module, batch)
    _check_output(cls, out)
    out.loss.backward()
    grads = [p.grad for p in module.parameters() if p.requires_grad and p.grad is not None]
    assert grads, f"{cls.__name__}: the loss reaches no trainable parameter"
    assert all(torch.isfinite(g).all() for g in grads), f"{cls.__name__}: non-finite gradient"
    if cls.needs_reference:
        reference = getattr(module, "reference_model", None)
        if reference is not None:
            assert all(p.grad is None for p in reference.parameters()), "the reference received gradients"
    return out


def _check_signature(algorithm: Algorithm) -> None:
    cls = type(algorithm)
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        assert parameter.annotation is not inspect.Parameter.empty, f"{cls.__name__}({name}) needs a type annotation"
        assert hasattr(algorithm, name), f"{cls.__name__} must store its argument {name!r} as self.{name}"
    rebuilt = cls(**hyperparameters(algorithm))
    assert hyperparameters(rebuilt) == hyperparameters(algorithm), f"{cls.__name__} does not rebuild from its hyperparameters"
    assert cls.summary(), f"{cls.__name__} needs a docstring whose first line summarises it"


def _check_output(cls: type, out: LossOutput) -> None:
    assert isinstance(out, LossOutput), f"{cls.__name__}.loss must return a LossOutput"
    assert out.loss.ndim == 0, f"{cls.__name__}: the loss must be a scalar, got shape {tuple(out.loss.shape)}"
    assert torch.isfinite(out.loss), f"{cls.__name__}: non-finite loss {out.loss}"
    assert out.loss.requires_grad, f"{cls.__name__}: the loss does not depend on trainable parameters"
    for key, value in out.metrics.items():
        assert isinstance(value, torch.Tensor) and value.ndim == 0, f"{cls.__name__}: metric {key!r} must be a scalar tensor"
        assert not value.requires_grad, f"{cls.__name__}: metric {key!r} must be detached"
        assert torch.isfinite(value), f"{cls.__name__}: metric {key!r} is not finite"

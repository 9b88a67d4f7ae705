"""The plugin contract: ``check_algorithm`` runs one loss of a plugin on the tiny built-in
model with a small batch of its data kind, then the backward pass, and checks what every
plugin must honour (see ``lightning_rlhf.testing``)."""

from __future__ import annotations

import inspect

import torch

from lightning_rlhf.algorithm import Algorithm, Experience, LossOutput, OnlineAlgorithm, hyperparameters
from lightning_rlhf.self_training import SelfTrainingAlgorithm
from lightning_rlhf.testing.reward import run_reward_algorithm
from lightning_rlhf.testing.samples import make_batch, make_policy_module
from lightning_rlhf.testing.self_training import run_self_training_algorithm


def check_algorithm(algorithm: Algorithm) -> LossOutput:
    """Assert the plugin contract on ``algorithm``; returns the loss output it produced."""
    cls = type(algorithm)
    assert isinstance(algorithm, Algorithm), f"{cls.__name__} must subclass lightning_rlhf.Algorithm"
    _check_signature(algorithm)
    if cls.stage == "reward":
        module, out = run_reward_algorithm(algorithm)  # the reward stage's own harness
    elif isinstance(algorithm, SelfTrainingAlgorithm):
        module, out = run_self_training_algorithm(algorithm)  # grow, select, then the loss
    elif isinstance(algorithm, OnlineAlgorithm):
        from lightning_rlhf.rewards import FunctionReward

        # Online: one rollout on the tiny model scored by a rule, then the loss on its first minibatch.
        module = make_policy_module(algorithm, reward=FunctionReward("lightning_rlhf.rewards.rules.letter_e_reward"))
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

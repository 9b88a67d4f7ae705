"""The reward stage's half of the plugin contract test (see ``lightning_rlhf.testing.contract``).

``check_algorithm`` calls :func:`run_reward_algorithm` for plugins whose ``stage`` is
``"reward"``: it builds a :class:`~lightning_rlhf.RewardModule` on the tiny built-in
model and runs the plugin's loss on a small batch of its data kind.
"""

from __future__ import annotations

from lightning_rlhf.algorithm import Algorithm, LossOutput
from lightning_rlhf.testing.samples import TINY_MODEL, make_batch


def make_reward_module(algorithm: Algorithm, model: str = TINY_MODEL, **kwargs):
    """A :class:`~lightning_rlhf.RewardModule` on ``model`` (a fresh score head), ready to use."""
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.modules.reward_module import RewardModule

    module = RewardModule(ModelSettings(name_or_path=model), algorithm, **kwargs)
    module.configure_model()
    return module


def run_reward_algorithm(algorithm: Algorithm, rows: list[dict] | None = None):
    """``(module, LossOutput)``: the plugin's loss on ``rows`` (default: ``SAMPLE_ROWS``
    of its data kind), with grad, not yet backpropagated."""
    module = make_reward_module(algorithm)
    batch = make_batch(type(algorithm).data, module.tokenizer, rows)
    out: LossOutput = algorithm.loss(module, batch)
    return module, out

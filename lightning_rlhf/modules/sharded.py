"""What the modules do differently under sharding strategies (FSDP, DeepSpeed).

Where each model lives, per strategy (the strategy wraps the whole LightningModule, so
the frozen reference goes wherever the policy goes):

- **DDP**: every process holds the policy and the frozen reference whole. The reference's
  parameters have ``requires_grad=False``, so DDP's reducer skips them; the optimiser
  gets the policy's trainable parameters only.
- **FSDP** (``FSDPStrategy`` with ``auto_wrap_policy: [<DecoderLayer class>]``): each
  decoder layer of the policy *and of the reference* is an FSDP unit sharded across the
  processes. The reference is sharded, not replicated, on purpose: a replicated copy
  costs a whole model per GPU, the memory FSDP is there to save. Its layer units hold
  only frozen parameters, so they have no gradient at all. Both models' embeddings,
  final norm and output head stay in the root unit, gathered for the whole training
  step: ``ctx.policy_logps`` calls the decoder and the output head directly, outside any
  wrapped ``forward`` but inside the root's, so they cannot be units of their own. A
  root unit that mixes trainable and frozen parameters needs ``use_orig_params=True``
  (Lightning's default, checked in :func:`check_strategy`); the frozen ones get no
  ``.grad`` and are not in the optimiser, at the cost of a sharded zero gradient for
  the reference's embeddings and head.
- **DeepSpeed ZeRO-3**: Lightning runs ``configure_model`` inside ``deepspeed.zero.Init``,
  so every parameter, the reference's included, is partitioned as it is created and
  gathered module by module as it runs. ZeRO's gradient and optimiser partitions hold
  only the parameters with ``requires_grad`` (Lightning hands DeepSpeed
  ``filter(requires_grad, parameters)``). **ZeRO-2**: parameters (reference included)
  replicated; gradients and optimiser state of the policy sharded.
- **Reward sources** (online algorithms) are not part of the module: each process keeps
  its own copy, outside any strategy, and scores under ``no_grad``.

Two things break without help, both handled here: a Hugging Face ``from_pretrained``
inside ``zero.Init`` writes the checkpoint into empty partitions (``IndexError`` in
``_init_weights``) unless transformers is told, through a live ``HfDeepSpeedConfig``,
that ZeRO-3 is on (:func:`loading_into_shards`); and exporting at the end of ``fit``
needs the full weights, gathered by every process (:func:`full_weights`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch


def is_zero3(strategy) -> bool:
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3


def is_fsdp(strategy) -> bool:
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy)


@contextmanager
def loading_into_shards(trainer) -> Iterator[None]:
    """Wrap model loading in ``configure_model``: under ZeRO-3, transformers loads each
    checkpoint tensor into its partitions (it holds only a weak reference to the config,
    so it is kept alive here until loading is done)."""
    strategy = getattr(trainer, "strategy", None)
    if not is_zero3(strategy):
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    zero3_config = HfDeepSpeedConfig(strategy.config)
    try:
        yield
    finally:
        del zero3_config


def full_weights(trainer, model: torch.nn.Module):
    """A context in which ``model``'s parameters hold their full values, for export.
    Under ZeRO-3 they are gathered, and every process must enter it; elsewhere the
    weights are already whole."""
    if is_zero3(getattr(trainer, "strategy", None)):
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    return nullcontext()


def check_strategy(strategy, online: bool = False, export_dir: str | None = None) -> None:
    """Refuse, before any model is loaded, what would fail or hang later under ``strategy``
    for a module that generates (``online``) or exports when fit ends (``export_dir``)."""
    if online and is_zero3(strategy):
        raise ValueError(
            "online algorithms generate with the policy, and under DeepSpeed ZeRO-3 every new token would "
            "gather every layer's weights from all processes: use ZeRO stage 2 (or DDP with LoRA) for them"
        )
    if not is_fsdp(strategy):
        return
    if not strategy.kwargs.get("use_orig_params", False):
        raise ValueError(
            "FSDPStrategy needs use_orig_params=True here: the root FSDP unit holds the frozen reference's "
            "embeddings and head beside the policy's (see lightning_rlhf.modules.sharded)"
        )
    if online:
        raise ValueError(
            "online algorithms generate with the policy outside the FSDP-wrapped forward, where FSDP keeps the "
            "root unit's weights sharded: use DDP (LoRA) or DeepSpeed for them"
        )
    if export_dir:
        raise ValueError(
            "export_dir under FSDP: the weights are sharded across processes when fit ends. Leave export_dir "
            "unset and export the last checkpoint (state_dict_type: full, or consolidate a sharded one with "
            "`python -m lightning.pytorch.utilities.consolidate_checkpoint`) with `lightning-rlhf export`"
        )

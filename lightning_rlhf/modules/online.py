"""The online half of OnlinePolicyModule: rollouts, the critic, and the PPO-style update loop.

For an :class:`~lightning_rlhf.algorithm.OnlineAlgorithm` the module optimises by hand
(``automatic_optimization = False``). One training step, per batch of prompts:

1. ``experience = algorithm.rollout(module, prompts)``  (under ``torch.no_grad``: sample,
   score, old and reference log-probs, values, advantages: the plugin's mathematics; the
   policy's, reference's and critic's forwards run in pieces of ``online.rollout_batch_size``
   rows);
2. for every minibatch ``algorithm.minibatches(experience)`` yields (the plugin decides
   epochs and sizes): cut it into micro-batches of ``online.micro_batch_size`` rows,
   ``manual_backward(algorithm.loss(module, micro).loss)`` for each (gradients add up:
   the plugin divides by the *minibatch's* ``loss_tokens``), clip the policy's and the
   critic's gradients each by its own norm, one optimiser and scheduler step.

``trainer.global_step`` therefore counts optimiser steps, ``updates_per_rollout`` per
batch of prompts. The module also times generation against the whole step and logs
``train/time/generation_share`` and ``train/time/rollout_tokens_per_second``; the progress
bar shows the metric the plugin names in ``progress_metric``.

What the module lends an online plugin is listed, with signatures, in one place:
:class:`lightning_rlhf.algorithm.OnlineContext`.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import Tensor

from lightning_rlhf.algorithm import Experience, SequenceLogps, trim_padding
from lightning_rlhf.data import shared_prompt
from lightning_rlhf.generation import ENGINES, make_engine
from lightning_rlhf.models.critic import CriticSettings, ValueHead, head_values, load_value_model, value_model_values
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.rollout import Rollout

log = logging.getLogger(__name__)


@dataclass
class OnlineSettings:
    """Engineering settings of the online loop (the mathematics is the plugin's)."""

    micro_batch_size: int | None = None
    """rows per forward/backward inside a minibatch (gradient accumulation); None: the whole minibatch"""
    generation_batch_size: int = 64
    """sampled rows decoded together during a rollout"""
    engine: str = "hf"
    """what samples the rollouts: ``hf`` (transformers' ``generate``; every sample prefilled,
    every row kept to the longest) or ``decode`` (one prefill per prompt shared by its
    samples, finished rows dropped: faster for groups; the same distribution, other draws
    for a seed); see ``lightning_rlhf.generation.ENGINES``"""
    group_by_length: bool = False
    """cut a minibatch into micro-batches of rows of like length (each trimmed of its own
    padding) where the plugin's loss allows (``rows_apart_in_loss``); the same gradient up
    to rounding, less padding computed"""
    share_prompt: bool = False
    """compute each prompt once for its samples in every log-prob forward of the policy and
    the reference: the prompts run with a KV cache and each sample continues from its
    prompt's (``data.shared_prompt.group_prefix_layout``), packed to their real tokens where
    the model allows (``packed_attention``); the same log-probs for ``G - 1`` prompts fewer
    per group and no padding. Micro-batches then end where groups end"""
    rollout_batch_size: int | None = None
    """rows per forward without grad during a rollout (the policy's, the reference's and the
    critic's log-probs and values, each piece trimmed of its own padding); None:
    ``micro_batch_size``, and the whole rollout when that is None too"""
    sampler_logps: bool = False
    """take the policy's log-probs of a rollout's tokens from the engine that drew them (the
    log-probability each was sampled with) where a plugin needs them at rollout time (the
    GRPO family: a KL penalty in the reward, pi_old when a rollout serves several optimiser
    steps): one policy forward fewer per rollout. Only for rollouts sampled at a
    temperature with no top-p (the distribution drawn from is then the one the loss
    scores); this module's engines give the forward's numbers up to rounding, a serving
    engine its own"""
    max_grad_norm: float | None = 1.0
    """clip the policy's gradient norm before each step (the critic's is clipped on its own,
    ``critic.max_grad_norm``); None: no clipping"""
    sample_table_every_n_steps: int = 10
    """log a table of sampled completions and their rewards every this many rollouts (W&B only)"""
    sample_table_rows: int = 8

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"online.engine must be one of {sorted(ENGINES)}, got {self.engine!r}")
        if self.share_prompt and self.group_by_length:
            raise ValueError("online.share_prompt keeps a prompt's samples in one micro-batch and online.group_by_length "
                             "sorts them apart by length: set one of them")
        for name in ("micro_batch_size", "rollout_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"online.{name} must be positive, got {getattr(self, name)}")

    @property
    def rollout_rows(self) -> int | None:
        """Rows per rollout forward (``rollout_batch_size``, else ``micro_batch_size``); None: all."""
        return self.rollout_batch_size or self.micro_batch_size


def reward_spec(reward) -> dict | None:
    """A reward source as ``{class_path, init_args}`` plain data, for checkpoints and the run
    config: a composite's sources become specs in turn, so that a ``WeightedSum`` or a
    ``SafetyGatedReward`` is rebuilt whole and the checkpoint holds no Python objects (it
    loads with ``torch.load(weights_only=True)``). An argument that is not plain data is
    left out."""
    if reward is None:
        return None
    cls = type(reward)
    init_args = {}
    for name in inspect.signature(cls.__init__).parameters:
        if name != "self" and hasattr(reward, name) and (value := _plain(getattr(reward, name))) is not _NOT_PLAIN:
            init_args[name] = value
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


_NOT_PLAIN = object()


def _plain(value):
    from lightning_rlhf.rewards.base import RewardSource

    if isinstance(value, RewardSource):
        return reward_spec(value)
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _NOT_PLAIN if any(item is _NOT_PLAIN for item in items) else items
    if isinstance(value, dict):
        items = {k: _plain(v) for k, v in value.items()}
        return _NOT_PLAIN if not all(isinstance(k, str) for k in items) or _NOT_PLAIN in items.values() else items
    return value if isinstance(value, (str, int, float, bool, type(None))) else _NOT_PLAIN


class OnlineMixin:
    """Rollouts, critic and the manual update loop; mixed into OnlinePolicyModule."""

    # -- models ---------------------------------------------------------------------------
    @property
    def keeps_sampler_logps(self) -> bool:
        return self.online_settings.sampler_logps

    def build_rollout_engine(self):
        """The engine ``online.engine`` names, on the live policy."""
        return make_engine(self.online_settings.engine, self.policy, self.tokenizer, self.online_settings.generation_batch_size)

    def configure_critic(self) -> None:
        settings = self.critic_settings or CriticSettings()
        if settings.share_policy_backbone:
            self.value_head = ValueHead(self.policy.config.hidden_size).to(next(self.policy.parameters()).device)
            return
        model = settings.model or ModelSettings(name_or_path=self._default_critic_path())
        self.value_model = load_value_model(model, self.tokenizer)

    def _default_critic_path(self) -> str:
        from lightning_rlhf.rewards.reward_model_source import RewardModelSource

        # InstructGPT: the value function starts from the reward model.
        if isinstance(self.reward_source, RewardModelSource):
            return self.reward_source.path
        return self.policy_settings.name_or_path

    def critic_parameters(self) -> list[torch.nn.Parameter]:
        critic = self.value_model if self.value_model is not None else self.value_head
        return [p for p in critic.parameters() if p.requires_grad] if critic is not None else []

    # -- what online plugins may use --------------------------------------------------------
    def more_prompts(self, count: int, draw: int) -> dict:
        """``count`` more training prompts, a batch like the data loader's, drawn at random
        (with replacement) from the training rows: DAPO's dynamic sampling refills a
        rollout with them. The draw is seeded by the data seed, this process's rank, the
        optimiser step and ``draw`` (which refill of this rollout), so a resumed run draws
        what the uninterrupted run drew with nothing to checkpoint, and every process
        draws its own prompts."""
        trainer = self._trainer
        data = getattr(trainer, "datamodule", None) if trainer is not None else None
        if data is None or not getattr(data, "train_rows", None):
            raise RuntimeError(f"algorithm {self.algorithm.name!r} draws more prompts during a rollout: it needs a Trainer "
                               "fitting with a prompt data module")
        seed = ((int(data.seed) * 1_000_003 + trainer.global_rank) * 1_000_003 + trainer.global_step) * 101 + draw
        generator = torch.Generator().manual_seed(seed % (2**63))
        rows = torch.randint(len(data.train_rows), (count,), generator=generator).tolist()
        return data.collator()([data.train_rows[i] for i in rows])

    @property
    def sum_over_processes(self) -> Callable[[Tensor], Tensor] | None:
        """Sums a tensor over the processes of a data-parallel run, for statistics of the whole
        rollout (whitening, score moments, the KL controller's input); None with one process."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return None
        return lambda tensor: trainer.strategy.reduce(tensor.clone(), reduce_op="sum")

    def reward(self, prompts: list[str], completions: list[str], columns: list[dict] | None = None) -> Tensor:
        """The shared scoring (``PolicyModuleBase.reward``), and a composite source's parts
        (rewards.WeightedSum) kept to be logged each on its own; a rollout that draws more
        prompts calls this more than once."""
        scores = super().reward(prompts, completions, columns)
        parts = getattr(self, "_reward_parts", None)  # None outside an online step
        if parts is not None:
            for name, part in getattr(self.reward_source, "last_components", {}).items():
                parts.setdefault(f"reward/{name}", []).append(part.detach().float().cpu())
            for name, source in self.monitor_sources.items():
                parts.setdefault(f"monitor/{name}", []).append(source(prompts, completions, columns).float().cpu())
        return scores

    def _reward_part_means(self) -> dict[str, Tensor]:
        """``reward/<name>`` for each part of a composite reward and ``monitor/<name>`` for each
        monitored reward: the mean over this rollout's scored samples (NaN, an unscored
        sample, left out)."""
        means = {name: torch.cat(parts).nanmean() for name, parts in self._reward_parts.items()}
        self._reward_parts = None
        return means

    def step_rewards(self, prompts: list[str], rollout: Rollout) -> tuple[Tensor, tuple[list[list[float]], list[list[int]]]]:
        """For a reward source that scores every step (``rewards.StepRewardSource``): each
        completion's score (its steps aggregated as the source says), ``[N]`` on the module's
        device, and per completion its step scores and the columns (aligned with
        ``policy_logps``) of the tokens that end those steps."""
        from lightning_rlhf.rewards.steps import aggregate_steps
        from lightning_rlhf.rollout import step_columns

        source = self.reward_source
        if not hasattr(source, "step_scores"):
            raise RuntimeError(f"algorithm {self.algorithm.name!r} reads a reward per step: its reward source must score "
                               f"each step (lightning_rlhf.rewards.StepRewardSource), got {type(source).__name__}")
        scores = source.step_scores(prompts, rollout.completions)
        columns = step_columns(self.tokenizer, rollout, [len(s) for s in scores], source.step_separator)
        aggregate = torch.tensor([aggregate_steps(s, source.aggregation) for s in scores], device=self.device)
        return aggregate, (scores, columns)

    def online_process_rewards(self, rollout: Rollout, outcomes: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """For a reward source that learns process rewards from the rollouts
        (``rewards.OnlineImplicitPRM``, PRIME): while training, one update of its PRM on this
        rollout's completions with ``outcomes`` ``[N]`` as labels, then the updated PRM's
        ``[N, T-1]`` per-token process rewards, aligned with ``policy_logps``, and the
        update's metrics. The PRM is the source's own model with its own optimiser (saved
        with the source's state in checkpoints); the policy's rollout stays without grad."""
        source = self.reward_source
        if not hasattr(source, "update_and_score"):
            raise RuntimeError(f"algorithm {self.algorithm.name!r} trains a process reward model on its rollouts: its reward "
                               f"source must be lightning_rlhf.rewards.OnlineImplicitPRM, got {type(source).__name__}")
        if self._trainer is not None and self._trainer.world_size > 1:
            # each process would update its own copy on its own rollouts, and the copies drift apart
            raise RuntimeError("rewards.OnlineImplicitPRM trains its PRM in one process: it is not synchronised across "
                               f"the {self._trainer.world_size} processes of a data-parallel run")
        source.check_tokenizer(self.tokenizer)
        rewards, metrics = source.update_and_score(rollout.batch, outcomes)
        return rewards.to(self.device), metrics

    def values(self, batch: dict[str, Tensor]) -> Tensor:
        """``[N, T-1]`` critic values aligned with ``policy_logps`` (with grad when enabled)."""
        if self.value_model is not None:
            return self.rollout_forward(lambda piece: value_model_values(self.value_model, piece), batch)
        if self.value_head is not None:
            return self.rollout_forward(lambda piece: head_values(self.policy, self.value_head, piece), batch)
        raise RuntimeError(f"algorithm {self.algorithm.name!r} declares needs_value = False: no critic was built")

    def policy_logps_and_values(self, batch: dict[str, Tensor], temperature: float = 1.0,
                                entropy: bool = False) -> tuple[SequenceLogps, Tensor]:
        """``policy_logps(batch, temperature, entropy)`` and ``values(batch)``. With a value
        head on the policy's backbone, from one backbone forward: its last hidden states
        feed both the output head's chunked log-probs and the value head (a separate value
        model runs its own)."""
        if self.value_head is None:
            return self.policy_logps(batch, temperature, entropy), self.values(batch)
        return self.rollout_forward(lambda piece: self._logps_and_head_values(piece, temperature, entropy), batch)

    def _logps_and_head_values(self, batch: dict[str, Tensor], temperature: float, entropy: bool) -> tuple[SequenceLogps, Tensor]:
        batch = {k: v for k, v in batch.items() if not k.startswith(shared_prompt.GROUP)}  # a state per position
        self._captured_hidden = []
        try:
            logps = self._logps(self.policy, batch, temperature, entropy)
            (hidden,) = self._captured_hidden
        finally:
            self._captured_hidden = None
        if hidden.shape[:2] != batch["input_ids"].shape:
            # one row per pair (data.shared_prompt) packs the hidden states: no value per position
            raise RuntimeError("a value head on the policy's backbone needs one row per sequence, got a packed batch")
        return logps, self.value_head(hidden[:, :-1])

    def _decoder(self, model: torch.nn.Module, hf_model) -> torch.nn.Module | Callable[..., object]:
        """The base's decoder; while ``_logps_and_head_values`` runs the policy, a call that also
        keeps the last hidden states it returns, for the value head. A wrapping call rather
        than a forward hook: the compiled decoder (``compile_policy``) does not guard on its
        hooks (torch._dynamo's ``skip_nnmodule_hook_guards``), so it could miss a hook
        added after it compiled."""
        decoder = super()._decoder(model, hf_model)
        captured = self._captured_hidden
        if captured is None or model is not self.policy:
            return decoder

        def keep_hidden(**inputs):
            out = decoder(**inputs)
            captured.append(out.last_hidden_state)
            return out

        return keep_hidden

    def rollout_forward(self, forward: Callable[[dict[str, Tensor]], RowResult], batch: dict[str, Tensor]) -> RowResult:
        """``forward(batch)``; without grad (a rollout's scoring), in pieces of
        ``online.rollout_rows`` rows: the whole rollout in one forward is the peak of a
        rollout's memory on a real checkpoint. With grad the loop's micro-batches bound it."""
        size = self.online_settings.rollout_rows if not torch.is_grad_enabled() else None
        if self.online_settings.share_prompt:
            return in_row_pieces(lambda piece: forward(with_group_layout(piece)), batch, size)
        return in_row_pieces(forward, batch, size)

    # -- the loop ---------------------------------------------------------------------------
    def configure_online_optimizers(self):
        settings = self.optimizer_settings
        critic = self.critic_parameters()
        shared_head = self.value_head is not None
        policy_params = list(self.policy.parameters()) + (critic if shared_head else [])
        prompts = getattr(getattr(self.trainer, "datamodule", None), "batch_size", 1)
        updates = self.algorithm.updates_per_rollout(prompts * self.algorithm.samples_per_prompt)
        # global_step counts optimiser steps here: max_steps is already in those units.
        total = int(self.trainer.estimated_stepping_batches)
        if self.trainer.max_steps is None or self.trainer.max_steps < 0:
            total *= updates
        extra = []
        if critic and not shared_head:
            lr = (self.critic_settings.learning_rate if self.critic_settings else None) or settings.learning_rate
            extra.append({"params": critic, "lr": lr, "weight_decay": 0.0})
        return settings.build(policy_params, total, extra_groups=extra)

    def online_training_step(self, batch: dict, batch_idx: int) -> None:
        step_start = time.perf_counter()
        self._generation_seconds, self._generated_tokens, self._reward_parts = 0.0, 0, {}
        with torch.no_grad():  # the engine's promise, whether or not a plugin decorates its rollout
            experience = self.algorithm.rollout(self, batch)
        rollout_seconds = time.perf_counter() - step_start
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        loss_sum, metric_sums, norm_sums, updates = 0.0, {}, {}, 0
        for minibatch in self.algorithm.minibatches(experience):
            rows = minibatch["input_ids"].shape[0]
            self._count_over_processes(minibatch)
            by_length = self.online_settings.group_by_length and self.algorithm.rows_apart_in_loss
            for micro in split_micro_batches(minibatch, self.online_settings.micro_batch_size, by_length):
                out = self.algorithm.loss(self, micro)
                self.manual_backward(out.loss if out.loss.requires_grad else out.loss + self._zero_through_parameters())
                weight = micro["input_ids"].shape[0] / rows
                loss_sum += out.loss.detach()
                for key, value in out.metrics.items():
                    metric_sums[key] = metric_sums.get(key, 0.0) + value * weight
            for name, norm in self.clip_gradient_norms().items():
                norm_sums[name] = norm_sums.get(name, 0.0) + norm
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if self.rollout_engine is not None:
                self.rollout_engine.weights_changed()
            if scheduler is not None:
                scheduler.step()
            updates += 1
        self.algorithm.after_updates(experience)
        step_seconds = time.perf_counter() - step_start
        n = len(experience)
        metrics = {f"train/{k}": v for k, v in {**experience.metrics, **self._reward_part_means()}.items()}
        metrics.update({f"train/{k}": v / max(updates, 1) for k, v in metric_sums.items()})
        metrics.update({f"train/grad_norm/{k}": v / max(updates, 1) for k, v in norm_sums.items()})
        metrics["train/loss"] = torch.as_tensor(loss_sum / max(updates, 1))
        metrics["train/time/generation_share"] = torch.tensor(self._generation_seconds / step_seconds)
        metrics["train/time/rollout_share"] = torch.tensor(rollout_seconds / step_seconds)
        metrics["train/time/rollout_tokens_per_second"] = torch.tensor(self._generated_tokens / max(self._generation_seconds, 1e-9))
        metrics["train/time/step_seconds"] = torch.tensor(step_seconds)
        # The progress bar shows the metric the plugin names (this module knows no plugin's metrics).
        progress = f"train/{self.algorithm.progress_metric}"
        for key, value in metrics.items():
            self.log(key, torch.as_tensor(value, dtype=torch.float32).detach(), prog_bar=key == progress, batch_size=n)
        self._maybe_log_samples(experience)

    def clip_gradient_norms(self) -> dict[str, Tensor]:
        """Clip the policy's gradients and the critic's each by its own norm (a value loss far
        from converged has a large gradient, which clipped together with the policy's would
        shrink the policy's step); returns each part's norm before clipping, as a tensor (no
        host sync). Under DeepSpeed the engine clips by its own ``gradient_clipping``."""
        if self._trainer is not None and isinstance(self.trainer.strategy, DeepSpeedStrategy):
            return {}
        critic = self.critic_settings or CriticSettings()
        policy_norm = self.online_settings.max_grad_norm
        parts = {"policy": ([p for p in self.policy.parameters() if p.requires_grad], policy_norm),
                 "critic": (self.critic_parameters(), critic.max_grad_norm if critic.max_grad_norm is not None else policy_norm)}
        norms = {}
        for name, (params, max_norm) in parts.items():
            params = [p for p in params if p.grad is not None]
            if max_norm is not None and params:
                norms[name] = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norms

    def _zero_through_parameters(self) -> Tensor:
        """0, as a function of every trained parameter: the loss of a micro-batch whose samples
        were all left out has no graph, but every process must still run a backward that
        reaches every parameter (DDP all-reduces the gradients from those hooks) and take its
        optimiser step, as the others do."""
        trained = [p for p in self.parameters() if p.requires_grad]
        return torch.stack([p.sum() for p in trained]).sum() * 0.0

    def _count_over_processes(self, minibatch: dict[str, Tensor]) -> None:
        """Under data parallelism, make ``loss_tokens`` and ``loss_rows`` the processes' mean
        counts: a loss that divides its sum by them then has, after DDP averages the
        gradients, the gradient of the mean over the whole global minibatch (DAPO's token
        mean over the batch), not the mean of per-process means."""
        total = self.sum_over_processes
        if total is None:
            return
        counts = total(torch.stack([minibatch["loss_tokens"], minibatch["loss_rows"]]).to(self.device, torch.float32))
        minibatch["loss_tokens"], minibatch["loss_rows"] = counts / self.trainer.world_size

    @torch.no_grad()
    def online_validation_step(self, batch: dict, batch_idx: int) -> None:
        self._generation_seconds, self._generated_tokens, self._reward_parts = 0.0, 0, {}
        experience = self.algorithm.rollout(self, batch)
        self.log_dict(
            {f"val/{k}": torch.as_tensor(v, dtype=torch.float32) for k, v in {**experience.metrics, **self._reward_part_means()}.items()},
            batch_size=len(experience), sync_dist=True,
        )

    def _maybe_log_samples(self, experience: Experience) -> None:
        every = self.online_settings.sample_table_every_n_steps
        batch_idx = self.trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1
        if every <= 0 or batch_idx % every != 0 or not self.trainer.is_global_zero:
            return
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in self.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        columns, rows = self.algorithm.sample_table(experience, self.online_settings.sample_table_rows)
        for logger in loggers:
            logger.log_table(key="train/samples", columns=columns, data=rows)


RowResult = SequenceLogps | Tensor | tuple[SequenceLogps | Tensor, ...]


def in_row_pieces(forward: Callable[[dict[str, Tensor]], RowResult], batch: dict[str, Tensor], size: int | None) -> RowResult:
    """``forward`` (a batch to its ``SequenceLogps`` or ``[N, T-1]`` tensor, or a tuple of
    them) run on pieces of at most ``size`` rows, each trimmed of the padding past its own
    longest row, stitched back in row order and padded with 0 to the batch's width. A
    right-padded row's tokens never see the padding after them, so each row's result where
    its mask is 1 is the one the whole batch gives; past a piece's width it is 0 (where the
    mask is 0 anyway)."""
    n = batch["input_ids"].shape[0]
    if size is None or size >= n:
        return forward(batch)
    parts = [forward(_row_piece(batch, start, min(start + size, n))) for start in range(0, n, size)]
    return _stitch_results(parts, batch)


def with_group_layout(piece: dict[str, Tensor]) -> dict[str, Tensor]:
    """``piece`` with its prompt-once layout added (``data.shared_prompt``), where its rows
    share prompts. A separate value model reads the usual rows beside it, and so does the
    policy when a value head on its backbone needs a hidden state per position."""
    if shared_prompt.PREFIX + "ids" in piece or shared_prompt.GROUP + "index" in piece:
        return piece
    layout = shared_prompt.group_prefix_layout(piece)
    return piece if layout is None else {**piece, **layout}


def _stitch_results(parts: list[RowResult], batch: dict[str, Tensor]) -> RowResult:
    width = batch["input_ids"].shape[1] - 1
    if isinstance(parts[0], tuple):
        return tuple(_stitch_results([part[i] for part in parts], batch) for i in range(len(parts[0])))
    if isinstance(parts[0], SequenceLogps):
        entropy = _stitch([part.entropy for part in parts], width) if parts[0].entropy is not None else None
        return SequenceLogps(_stitch([part.token_logps for part in parts], width), batch["completion_mask"][:, 1:], entropy)
    return _stitch(parts, width)


def _row_piece(batch: dict[str, Tensor], start: int, end: int) -> dict[str, Tensor]:
    n = batch["input_ids"].shape[0]
    piece = {key: value[start:end] if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == n else value
             for key, value in batch.items() if key != "logp_index"}  # a flat index over all rows: recomputed
    return trim_padding(piece)


def _stitch(parts: list[Tensor], width: int) -> Tensor:
    return torch.cat([F.pad(part, (0, width - part.shape[1])) for part in parts])


def split_micro_batches(minibatch: dict[str, Tensor], size: int | None, by_length: bool = False):
    """Yield pieces of about ``size`` rows of a minibatch (trimmed of padding), keeping its
    ``loss_tokens`` and ``loss_rows``, which count the whole minibatch. A piece ends only
    where a group ends (``group_index``: rows that share a prompt are contiguous), so it
    may hold more than ``size`` rows, by less than a group. ``by_length``: rows sorted by
    length first and cut into pieces of exactly ``size`` (groups may be split: only for a
    loss that scores each row apart), so each piece's padding is small."""
    n = minibatch["input_ids"].shape[0]
    if size is None or size >= n:
        yield minibatch
        return
    if by_length:
        order = minibatch["attention_mask"].sum(-1).argsort(stable=True)
        pieces = [order[start : start + size] for start in range(0, n, size)]
    else:
        pieces = [torch.arange(start, end) for start, end in _piece_bounds(minibatch.get("group_index"), n, size)]
    for rows in pieces:
        piece = {}
        for key, value in minibatch.items():
            if key in ("logp_index", "loss_tokens", "loss_rows"):
                continue
            piece[key] = value.index_select(0, rows.to(value.device)) if by_length else value[int(rows[0]) : int(rows[-1]) + 1]
        piece = trim_padding(piece)
        piece["loss_tokens"], piece["loss_rows"] = minibatch["loss_tokens"], minibatch["loss_rows"]
        yield piece


def _piece_bounds(group_index: Tensor | None, n: int, size: int) -> list[tuple[int, int]]:
    if group_index is None:
        return [(start, min(start + size, n)) for start in range(0, n, size)]
    ends = (torch.nonzero(group_index[1:] != group_index[:-1]).flatten() + 1).tolist() + [n]
    bounds, start = [], 0
    for end in ends:
        if end - start >= size or end == n:
            bounds.append((start, end))
            start = end
    return bounds

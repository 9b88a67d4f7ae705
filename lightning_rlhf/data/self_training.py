"""The data side of self-training (rejection sampling, ReST; ``lightning_rlhf.self_training``):
each phase's training rows are made by the policy being trained.

``SelfTrainingDataModule`` reads prompts as ``PromptDataModule`` does. Lightning asks it
for a training loader at the start of every epoch (the recipe sets
``trainer.reload_dataloaders_every_n_epochs: 1``); at the first epoch of a phase it builds
the phase with the module's policy and reward source (grow, select: the plugin's rules)
and writes, under ``<output_dir>/<phase name>/``::

    candidates.jsonl   every sample the phase drew: prompt, completion, reward, finished, ...
    selected.jsonl     the kept rows in the SFT format (prompt, completion; reward, phase beside)
    summary.json       the phase and its statistics (also logged as phase/*)

then serves the kept rows as SFT batches: tokenised as ``SFTDataModule`` tokenises them,
shuffled by (seed, epoch) (grouped by length with ``group_by_length``), resumable mid-epoch. ``selected.jsonl`` trains an ``sft`` run
as it is. The phase an epoch belongs to is the plugin's (``epochs_per_phase``).

Which phase is current, and its rows, are in the plugin's checkpointed state: a resumed
run serves the interrupted phase's rows again instead of sampling anew. (Lightning asks
for the loader once before it restores the loop counters, to size the learning-rate
schedule; the rows of an earlier epoch than the current phase's are never rebuilt.)

With several processes each samples its share of the prompts and the candidates are
gathered, so every process selects the same rows and trains on its shard of them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from lightning_rlhf.data.collate import SFTCollator
from lightning_rlhf.data.length_grouping import example_length
from lightning_rlhf.data.prompts import PromptDataModule
from lightning_rlhf.data.sampler import ResumableDataLoader
from lightning_rlhf.data.tokenize import Tokenization
from lightning_rlhf.self_training import Candidate, PhaseData, SelfTrainingAlgorithm

log = logging.getLogger(__name__)


class SelfTrainingDataModule(PromptDataModule):
    """Prompts in; each phase trains on the policy's own selected samples (rejection sampling, ReST)."""

    def __init__(self, *args, output_dir: str | None = None, **kwargs):
        """
        Args:
            output_dir: where each phase's folder of candidates and selected rows goes;
                default: the trainer's ``default_root_dir``
        """
        super().__init__(*args, **kwargs)
        if self.val_path is not None or self.val_fraction > 0:
            raise ValueError(
                "self-training has no validation loss to compute on prompts: drop val_path/val_fraction and compare "
                "policies with `lightning-rlhf evaluate` (each phase logs its samples' rewards as phase/*)"
            )
        self.output_dir = output_dir
        self._checked = False

    # -- Lightning's hook --------------------------------------------------------------------
    def train_dataloader(self) -> ResumableDataLoader:
        trainer = self.trainer
        module = trainer.lightning_module
        algorithm = module.algorithm
        if not self._checked:
            check_setup(trainer, module, algorithm)
            self._checked = True
        if algorithm.current is None and trainer.ckpt_path:
            # Sampling anew from the restored weights would train on rows the first run never saw.
            raise ValueError(
                f"{trainer.ckpt_path} holds no self-training state (which phase, which rows): it was saved without "
                "lightning_rlhf.callbacks.RunState, which `lightning-rlhf fit` adds; resume from a checkpoint that has it"
            )
        phase = algorithm.phase_at_epoch(trainer.current_epoch)
        if algorithm.current is None or phase.index > algorithm.current.phase.index:
            self.build(module, algorithm, phase)
        current = algorithm.current
        rows = self.encode_selected(current.selected)
        if not rows:
            raise ValueError(
                f"phase {current.phase.name!r} kept no samples (threshold {current.phase.threshold}); "
                f"see {self.phase_dir(current.phase.name)} and lower the threshold(s)"
            )
        return ResumableDataLoader(
            rows,
            batch_size=self.batch_size,
            seed=self.seed,
            shuffle=True,
            num_replicas=trainer.world_size,
            rank=trainer.global_rank,
            # batches of one optimiser step are counted together, for token-averaged losses
            accumulate=trainer.accumulate_grad_batches,
            lengths=[example_length(row) for row in rows] if self.group_by_length else None,
            collate_fn=SFTCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of),
            num_workers=self.num_workers,
        )

    # -- one phase ------------------------------------------------------------------------------
    def build(self, module, algorithm: SelfTrainingAlgorithm, phase) -> PhaseData:
        """Grow (this process's share of the prompts), gather, select; write and log the phase."""
        trainer = self.trainer
        prompts = [{**row, "prompt_index": i} for i, row in enumerate(self.train_rows)]
        grown, seconds = None, 0.0
        if phase.grow:
            started = time.perf_counter()
            rank, world = trainer.global_rank, trainer.world_size
            # A seed per (phase, process): phases draw fresh samples, processes different ones.
            seed = self.seed + 1000 * phase.index + rank
            grown = gather_candidates(algorithm.grow(module, prompts[rank::world], phase, seed), world)
            seconds = time.perf_counter() - started
        data = algorithm.start_phase(phase, grown, len(prompts), seconds)
        if trainer.is_global_zero:
            self.write_phase(data)
        for logger in trainer.loggers:
            logger.log_metrics(data.metrics, step=trainer.global_step)
        log.info("phase %s: %d of %d candidates kept", phase.name, len(data.selected), data.pool_size)
        return data

    def phase_dir(self, name: str) -> Path:
        return Path(self.output_dir or self.trainer.default_root_dir) / name

    def write_phase(self, data: PhaseData) -> Path:
        directory = self.phase_dir(data.phase.name)
        directory.mkdir(parents=True, exist_ok=True)
        if data.grown is not None:
            write_jsonl(directory / "candidates.jsonl", [c.to_row() for c in data.grown])
        write_jsonl(directory / "selected.jsonl", [c.sft_row() for c in data.selected])
        summary = {"phase": asdict(data.phase), "prompts": data.prompts, "metrics": data.metrics}
        write_text(directory / "summary.json", json.dumps(summary, indent=2) + "\n")
        return directory

    def encode_selected(self, selected: list[Candidate]) -> list[dict]:
        """The kept rows tokenised exactly as ``SFTDataModule`` tokenises a prompt/completion row."""
        tokenization = Tokenization(self.tokenizer, self.max_length, self.max_prompt_length, self.chat_template)
        rows = []
        for candidate in selected:
            tokens = tokenization.encode(candidate.prompt, candidate.completion)
            if tokens is not None:
                rows.append({"prompt_ids": tokens.prompt_ids, "completion_ids": tokens.completion_ids})
        report = tokenization.drop_report(len(selected), "the selected samples")
        if report:
            log.warning(report)
        return rows


def check_setup(trainer, module, algorithm) -> None:
    """Refuse a run that cannot follow the plugin's phases; warn about a schedule that may not."""
    if not isinstance(algorithm, SelfTrainingAlgorithm):
        raise ValueError(
            f"SelfTrainingDataModule makes each phase's rows for a self-training algorithm (rejection_sampling, rest); "
            f"{algorithm.name or type(algorithm).__name__!r} is not one: use PromptDataModule"
        )
    if trainer.reload_dataloaders_every_n_epochs != 1:
        raise ValueError(
            "self-training builds each phase's data at the start of an epoch: set trainer.reload_dataloaders_every_n_epochs: 1"
        )
    total = algorithm.total_epochs()
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs < 0 or max_epochs > total:
        raise ValueError(
            f"{algorithm.name} has {len(algorithm.phases())} phases of {algorithm.epochs_per_phase} epoch(s): "
            f"set trainer.max_epochs: {total} (got {max_epochs})"
        )
    if max_epochs < total:
        warnings.warn(f"trainer.max_epochs is {max_epochs}: only the first of {total} epochs of {algorithm.name}'s phases will run")
    schedule = getattr(getattr(module, "optimizer_settings", None), "schedule", "constant")
    if schedule != "constant":
        warnings.warn(
            f"a {schedule} learning-rate schedule is laid over an estimate (the first phase's length times the epochs): "
            "later phases may be longer or shorter; `schedule: constant` follows the phases exactly"
        )


def gather_candidates(local: list[Candidate], world_size: int) -> list[Candidate]:
    """Every process's candidates, in (prompt, sample) order, on every process."""
    if world_size > 1:
        import torch.distributed as dist

        parts: list[list[Candidate] | None] = [None] * world_size
        dist.all_gather_object(parts, local)
        local = [c for part in parts for c in part]
    return sorted(local, key=lambda c: (c.prompt_index, c.sample))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def write_text(path: Path, text: str) -> None:
    """Write to a temporary file and rename: a crash leaves the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

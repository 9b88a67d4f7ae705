"""One short training run on ``builtin:tiny-llama``, as a script, for the equivalence tests.

``python tests/distributed_worker.py SPEC.json`` trains as the JSON spec says (objective,
data file, rows per batch per process, processes, accumulation, gradient checkpointing,
strategy) and writes to the spec's ``out`` directory:

- ``losses_rank{r}.json``: for every optimiser step, the losses of the micro-batches
  that made it, as this process computed them (``training_step``'s return, before
  Lightning divides it by ``accumulate_grad_batches``);
- ``policy.pt`` (rank 0): the policy's weights when training ends.

It is a script, not a function, because Lightning's ``ddp`` launcher starts the other
ranks by running the same command line again with ``LOCAL_RANK`` set.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

from lightning_rlhf.data import DATA_MODULES
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.modules.optim import OptimizerSettings
from lightning_rlhf.modules.policy import PolicyModule
from lightning_rlhf.registry import create_algorithm_from_spec


class RecordLosses(L.Callback):
    """Keeps each micro-batch's loss, grouped by the optimiser step it went into."""

    def __init__(self):
        self.steps: list[list[float]] = []
        self._pending: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # outputs["loss"] was divided by accumulate_grad_batches for backward; undo it.
        self._pending.append(float(outputs["loss"]) * trainer.accumulate_grad_batches)
        if len(self.steps) < trainer.global_step:  # an optimiser step just ran
            self.steps.append(self._pending)
            self._pending = []


def build_strategy(spec: dict) -> L.pytorch.strategies.Strategy:
    """A strategy from its recipe form, parsed as ``lightning-rlhf fit`` parses it."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--strategy", type=L.pytorch.strategies.Strategy)
    return parser.instantiate(parser.parse_object({"strategy": spec})).strategy


def run(spec: dict) -> None:
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    algorithm = create_algorithm_from_spec(spec["algorithm"])
    module = PolicyModule(
        policy=ModelSettings(name_or_path="builtin:tiny-llama", gradient_checkpointing=spec.get("gradient_checkpointing", False)),
        algorithm=algorithm,
        optimizer=OptimizerSettings(learning_rate=spec.get("learning_rate", 1e-2), schedule="constant"),
    )
    data = DATA_MODULES[algorithm.data](path=spec["data"], batch_size=spec["batch_size"], max_length=48, seed=3)
    recorder = RecordLosses()
    strategy = spec.get("strategy", "auto")
    if isinstance(strategy, dict):  # {class_path, init_args}, as a recipe writes it
        strategy = build_strategy(strategy)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=spec.get("devices", 1),
        strategy=strategy,
        max_steps=spec["max_steps"],
        accumulate_grad_batches=spec.get("accumulate_grad_batches", 1),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    (out / f"losses_rank{trainer.global_rank}.json").write_text(json.dumps(recorder.steps))
    if trainer.is_global_zero:
        torch.save({k: v.detach().cpu() for k, v in module.policy.state_dict().items()}, out / "policy.pt")


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))

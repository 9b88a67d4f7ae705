"""One short training run on ``builtin:tiny-llama``, as a script, for the equivalence tests.

``python tests/distributed_worker.py SPEC.json`` trains as the JSON spec says (objective,
data file, rows per batch per process, processes, accumulation, gradient checkpointing,
strategy) and writes to the spec's ``out`` directory:

- ``losses_rank{r}.json``: for every optimiser step, the losses of the micro-batches
  that made it, as this process computed them (``training_step``'s return, before
  Lightning divides it by ``accumulate_grad_batches``);
- ``policy.pt`` (rank 0): the policy's weights when training ends;
- ``online_rank{r}.json`` (online algorithms): the optimiser steps this process took, the
  prompts its rollouts drew to refill (DAPO), the log-prob forwards whose samples ran
  packed (``online.share_prompt``) and the plugin's ``state_dict()`` when it has one (PPO's
  KL coefficient and score moments).

An online spec (``"reward"`` set) trains on prompt rows against a rule reward; with
``"engine": "scripted"`` its completions come from :class:`ScriptedEngine`, so that a
1-process run and a DDP run sample the same text for the same prompt.

It is a script, not a function, because Lightning's ``ddp`` launcher starts the other
ranks by running the same command line again with ``LOCAL_RANK`` set.
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import lightning as L
import torch

from lightning_rlhf.data import DATA_MODULES
from lightning_rlhf.engine import Sample, SamplingSettings
from lightning_rlhf.models.config import ModelSettings
from lightning_rlhf.modules.online import OnlineSettings
from lightning_rlhf.modules.optim import OptimizerSettings
from lightning_rlhf.modules.online_policy import OnlinePolicyModule
from lightning_rlhf.modules.policy import PolicyModule
from lightning_rlhf.registry import create_algorithm_from_spec
from lightning_rlhf.rewards import FunctionReward

SCRIPT_LETTERS = " abeeee"  # completions of these letters: letter_e_reward varies within a group


class ScriptedEngine:
    """A rollout engine whose j-th completion of a prompt depends on the prompt's tokens and
    j alone, not on the batch or the random stream. Real sampling draws a row's tokens from
    a stream shared by the whole batch, so a rank holding half of the prompts would sample
    other text than one process holding all of them; with this engine the two runs see the
    same rollouts, and everything after sampling (group statistics, normalisation over the
    batch, token means, the update) can be compared exactly."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.letters = tokenizer(SCRIPT_LETTERS, add_special_tokens=False)["input_ids"]
        self.eos = tokenizer.eos_token_id

    def weights_changed(self) -> None:
        return

    def generate(self, prompt_ids, n: int, settings: SamplingSettings, seed=None, return_logps=False) -> list[list[Sample]]:
        # A group's G samples come as n = G samples of its prompt, or as G copies of it (a
        # prompt that repeats in the batch): the k-th sample of a prompt in this call, counted
        # either way, draws the k-th completion, so samples differ as real ones do.
        seen: dict[tuple, int] = {}
        out = []
        for ids in prompt_ids:
            copy = seen[tuple(ids)] = seen.get(tuple(ids), -1) + 1
            out.append([self._sample(list(ids), copy * n + j, settings.max_new_tokens) for j in range(n)])
        return out

    def _sample(self, ids: list[int], j: int, max_new_tokens: int) -> Sample:
        generator = torch.Generator().manual_seed(zlib.crc32(json.dumps([ids, j]).encode()))
        length = int(torch.randint(1, max_new_tokens + 1, (1,), generator=generator))
        tokens = [self.letters[i] for i in torch.randint(len(self.letters), (length,), generator=generator).tolist()]
        finished = length < max_new_tokens  # the longest are cut off, as max_new_tokens cuts a real sample
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Sample(text=text, token_ids=tokens + [self.eos] if finished else tokens, finished=finished)


class RecordOnline(L.Callback):
    """An online run's optimiser steps and its DAPO refill draws, per process."""

    def __init__(self):
        self.refill_prompts = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.refill_prompts += float(trainer.callback_metrics.get("train/objective/refill_prompts", 0.0))


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


PACKED_FORWARDS = [0]  # forwards whose samples ran packed (online.share_prompt)


def _count_packed_forwards() -> None:
    from lightning_rlhf import packed_attention

    original = packed_attention.packed_completions_hidden

    def counted(*args):
        PACKED_FORWARDS[0] += 1
        return original(*args)

    packed_attention.packed_completions_hidden = counted


def run(spec: dict) -> None:
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    algorithm = create_algorithm_from_spec(spec["algorithm"])
    online = "reward" in spec
    _count_packed_forwards()
    settings = {"reward": FunctionReward(spec["reward"]), "online": OnlineSettings(share_prompt=spec.get("share_prompt", False))} if online else {}
    module = (OnlinePolicyModule if online else PolicyModule)(
        policy=ModelSettings(name_or_path="builtin:tiny-llama", gradient_checkpointing=spec.get("gradient_checkpointing", False)),
        algorithm=algorithm,
        optimizer=OptimizerSettings(learning_rate=spec.get("learning_rate", 1e-2), schedule="constant"),
        **settings,
    )
    data = DATA_MODULES[algorithm.data](path=spec["data"], batch_size=spec["batch_size"], max_length=48, seed=3)
    if spec.get("engine") == "scripted":
        module.rollout_engine = ScriptedEngine(module.tokenizer)
    recorder = RecordOnline() if online else RecordLosses()
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
    if online:
        record = {"optimizer_steps": trainer.global_step, "refill_prompts": recorder.refill_prompts,
                  "packed_forwards": PACKED_FORWARDS[0],
                  "algorithm_state": algorithm.state_dict() if callable(getattr(algorithm, "state_dict", None)) else None}
        (out / f"online_rank{trainer.global_rank}.json").write_text(json.dumps(record))
    else:
        (out / f"losses_rank{trainer.global_rank}.json").write_text(json.dumps(recorder.steps))
    if trainer.is_global_zero:
        torch.save({k: v.detach().cpu() for k, v in module.policy.state_dict().items()}, out / "policy.pt")


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))

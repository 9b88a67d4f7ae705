"""Scale-out gives the answer one process gives: DDP, gradient accumulation and gradient
checkpointing against a plain single-process run of the same global batch.

Why they can agree step for step, and where they would not without care:

- data: ``ResumableSampler`` is a ``DistributedSampler``, so rank ``r`` of ``W`` takes
  positions ``r, r+W, ...`` of the epoch's one shuffled order; with ``B`` rows per rank,
  step ``k``'s rows on all ranks together are positions ``[kWB, (k+1)WB)``, the rows of
  step ``k`` of one process with ``W*B`` rows per batch;
- per-pair means (DPO): the mean over ranks (and over accumulated micro-batches) of
  equal-sized means is the global mean;
- token means (SFT): the mean of per-rank token means is not the global token mean,
  so the loader counts the step's tokens and the module divides by the step's total
  (``data.step_tokens``, ``PolicyModule.loss_token_divisor``).

The DDP runs are real: ``tests/distributed_worker.py`` under Lightning's ``ddp`` launcher,
2 processes on the CPU with gloo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_rlhf.data.sampler import ResumableDataLoader
from lightning_rlhf.data.step_tokens import with_step_tokens
from tests.distributed_worker import run

ROOT = Path(__file__).resolve().parents[1]
ROWS = 32  # 4 optimiser steps of 8 rows
OBJECTIVES = {
    "dpo": ({"class_path": "dpo", "init_args": {"beta": 0.1}}, "tiny_preferences.jsonl"),
    "sft": ({"class_path": "sft"}, "tiny_sft.jsonl"),
}
# Measured (float32, 4 steps at learning rate 1e-2): per-step losses agree to 5e-7 and
# weights to 1e-4 (AdamW's first steps are about lr * sign(grad), so float noise in a
# near-zero gradient moves a weight by up to lr). A token-mean SFT loss averaged per
# rank instead misses by 1e-4 on the first step and 4e-2 in the weights.
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-3


def spec(tmp_path: Path, objective: str, name: str, **settings) -> dict:
    algorithm, data_file = OBJECTIVES[objective]
    data = tmp_path / data_file
    if not data.exists():
        lines = (ROOT / "recipes" / "data" / data_file).read_text().splitlines()[:ROWS]
        data.write_text("\n".join(lines) + "\n")
    return {"out": str(tmp_path / name), "algorithm": algorithm, "data": str(data), "max_steps": 4, **settings}


def results(spec: dict) -> tuple[list[float], list[list[list[float]]], dict]:
    """Per optimiser step, the loss of the whole step (the mean over processes and
    micro-batches of their losses); the raw per-rank losses; the final policy weights."""
    out = Path(spec["out"])
    ranks = [json.loads((out / f"losses_rank{r}.json").read_text()) for r in range(spec.get("devices", 1))]
    steps = [
        sum(sum(rank[i]) for rank in ranks) / sum(len(rank[i]) for rank in ranks) for i in range(len(ranks[0]))
    ]
    return steps, ranks, torch.load(out / "policy.pt")


def launch_ddp(spec: dict) -> None:
    path = Path(spec["out"] + ".json")
    path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "tests/distributed_worker.py", str(path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-4000:]


def assert_same_run(expected, actual) -> None:
    expected_losses, _, expected_weights = expected
    losses, _, weights = actual
    assert len(losses) == len(expected_losses) == 4
    assert max(abs(a - b) for a, b in zip(losses, expected_losses)) < LOSS_TOLERANCE, (losses, expected_losses)
    assert expected_losses[0] != expected_losses[-1]  # it trained
    assert weights.keys() == expected_weights.keys()
    worst = max((weights[k] - expected_weights[k]).abs().max().item() for k in weights)
    assert worst < WEIGHT_TOLERANCE, worst


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference runs: one process, 8 rows per step, no accumulation (cached per objective)."""
    cache: dict[str, tuple] = {}
    directory = tmp_path_factory.mktemp("one_process")

    def get(objective: str):
        if objective not in cache:
            settings = spec(directory, objective, f"{objective}_one", batch_size=8)
            run(settings)
            cache[objective] = results(settings)
        return cache[objective]

    return get


def test_rank_shards_make_up_the_one_process_batch():
    rows = list(range(20))
    one = list(ResumableDataLoader(rows, batch_size=8, seed=5))
    ranks = [list(ResumableDataLoader(rows, batch_size=4, seed=5, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 3
    for step in range(2):  # full steps: the same rows
        assert sorted(ranks[0][step].tolist() + ranks[1][step].tolist()) == sorted(one[step].tolist())
    # 20 rows: the last step has 4 rows on one process; DistributedSampler pads each rank
    # to 10 rows by repeating the order's first rows, so the ranks' last step has 2 more.
    last = ranks[0][2].tolist() + ranks[1][2].tolist()
    assert set(one[2].tolist()) <= set(last) and len(last) == 4


def test_step_tokens_counts_each_accumulation_window():
    def batch(*counts):  # rows with the given numbers of scored completion tokens
        mask = torch.zeros(len(counts), 6, dtype=torch.bool)
        for i, n in enumerate(counts):
            mask[i, 1 : 1 + n] = True  # position 0 is never scored (completion_mask[:, 1:])
        return {"completion_mask": mask}

    batches = [batch(1, 2), batch(3), batch(4, 0), batch(5), batch(2)]
    # windows of 2 from the epoch's start: (3 + 3), (4 + 5), (2): a short last window
    assert [int(b["loss_tokens"]) for b in with_step_tokens(batches, 2)] == [6, 6, 9, 9, 2]
    # resumed at batch 3 of the epoch: the first window is the rest of window [2, 4)
    assert [int(b["loss_tokens"]) for b in with_step_tokens(batches[3:], 2, start=3)] == [5, 2]
    # no accumulation: each batch's own count; batches without a completion_mask pass as they are
    assert [int(b["loss_tokens"]) for b in with_step_tokens(batches, 1)] == [3, 3, 4, 5, 2]
    assert list(with_step_tokens([{"prompts": ["a"]}], 2)) == [{"prompts": ["a"]}]


@pytest.mark.parametrize(
    ("objective", "batch_size", "accumulate"),
    [("dpo", 4, 1), ("sft", 2, 2)],  # SFT: token mean over 2 processes x 2 micro-batches
)
def test_ddp_two_processes_match_one(tmp_path, one_process, objective, batch_size, accumulate):
    settings = spec(
        tmp_path, objective, f"{objective}_ddp", batch_size=batch_size, accumulate_grad_batches=accumulate,
        devices=2, strategy="ddp",
    )
    launch_ddp(settings)
    ddp = results(settings)
    assert_same_run(one_process(objective), ddp)
    rank0, rank1 = ddp[1]
    assert rank0 != rank1  # each rank trained on its own half of the batch


@pytest.mark.parametrize("objective", ["dpo", "sft"])
def test_gradient_accumulation_matches_one_batch(tmp_path, one_process, objective):
    settings = spec(tmp_path, objective, f"{objective}_accumulated", batch_size=4, accumulate_grad_batches=2)
    run(settings)
    accumulated = results(settings)
    assert all(len(micro) == 2 for micro in accumulated[1][0])
    assert_same_run(one_process(objective), accumulated)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_tokenizer, lora):
    """DPO (policy and reference forwards) with and without checkpointing: same loss, same
    gradients; and the checkpointed run does recompute each layer in the backward pass."""
    from lightning_rlhf.models.config import LoraSettings, ModelSettings
    from lightning_rlhf.modules.policy import PolicyModule
    from lightning_rlhf.registry import get_algorithm
    from lightning_rlhf.testing import make_batch

    def step(checkpointing: bool):
        settings = ModelSettings(
            name_or_path="builtin:tiny-llama", gradient_checkpointing=checkpointing,
            lora=LoraSettings(r=4, alpha=8) if lora else None,
        )
        module = PolicyModule(settings, get_algorithm("dpo")(beta=0.1))
        torch.manual_seed(0)  # LoRA's A matrices are drawn at random
        module.configure_model()
        if lora:  # peft starts LoRA's B at zero: give it values, so its gradient path is exercised
            for name, p in module.policy.named_parameters():
                if "lora_B" in name:
                    p.data.normal_(0, 0.02)
        # Count runs of a module inside the first layer by wrapping its forward (torch does
        # not fire forward hooks while it recomputes a checkpointed region).
        inner = _first_layer(module.policy).mlp
        calls, forward = [], inner.forward
        inner.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)
        out = module.algorithm.loss(module, make_batch("preference", tiny_tokenizer))
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in module.policy.named_parameters() if p.requires_grad}
        return out.loss.detach(), grads, calls

    loss, grads, calls = step(False)
    loss_ckpt, grads_ckpt, calls_ckpt = step(True)
    assert len(calls_ckpt) == len(calls) + 1  # the policy's layer again, recomputed in backward
    assert torch.allclose(loss, loss_ckpt, atol=1e-6)
    assert grads.keys() == grads_ckpt.keys() and grads
    for name in grads:
        assert torch.allclose(grads[name], grads_ckpt[name], atol=1e-6, rtol=1e-5), name


def _first_layer(model: torch.nn.Module) -> torch.nn.Module:
    from lightning_rlhf.models.loading import unwrap

    return unwrap(model).get_decoder().layers[0]


# Online algorithms: 16 prompts, 8 per step (4 per process under DDP), 2 passes over each
# rollout (so pi_old differs from pi on the second step).
# GRPO's other loss types share dapo's group statistics; dapo adds the global token mean,
# the strictest of them, so it stands for the family here (each DDP case costs ~18 s).
ONLINE = {
    # DAPO without refill, truncated completions masked: flat groups and cut-off samples
    # are left out, so the processes score different numbers of tokens, and only a token
    # mean over the global batch matches one process
    "dapo": {"class_path": "grpo", "init_args": {"num_generations": 4, "loss_type": "dapo", "refill_rounds": 0,
                                                  "mask_truncated_completions": True}},
    # REINFORCE++ normalises advantages over the whole batch, a statistic of both processes
    "reinforce_pp": {"class_path": "reinforce_pp", "init_args": {"beta": 0.0}},
    # ties are left out of the loss: the processes hold different numbers of decided pairs
    "online_dpo": {"class_path": "online_dpo", "init_args": {"beta": 0.5}},
}


def online_spec(tmp_path: Path, name: str, algorithm: dict, **settings) -> dict:
    data = tmp_path / "prompts.jsonl"
    if not data.exists():
        lines = (ROOT / "recipes" / "data" / "tiny_prompts_answers.jsonl").read_text().splitlines()[:16]
        data.write_text("\n".join(lines) + "\n")
    init = {"num_iterations": 2, "max_new_tokens": 6, **algorithm["init_args"]}
    return {"out": str(tmp_path / name), "algorithm": {**algorithm, "init_args": init}, "data": str(data),
            "reward": "lightning_rlhf.rewards.rules.letter_e_reward", "max_steps": 4, "learning_rate": 3e-3, **settings}


def online_results(spec: dict) -> tuple[list[dict], dict]:
    out = Path(spec["out"])
    ranks = [json.loads((out / f"online_rank{r}.json").read_text()) for r in range(spec.get("devices", 1))]
    return ranks, torch.load(out / "policy.pt")


@pytest.mark.parametrize("algorithm", list(ONLINE))
def test_ddp_online_two_processes_match_one(tmp_path, algorithm):
    """Over the same global batch and the same completions, 2 processes end with the weights
    of 1 process: group advantages, batch normalisation and the token mean (dapo, whose
    processes keep different numbers of tokens) are those of the whole batch."""
    one = online_spec(tmp_path, "one", ONLINE[algorithm], batch_size=8, engine="scripted")
    run(one)
    ddp = online_spec(tmp_path, "ddp", ONLINE[algorithm], batch_size=4, engine="scripted", devices=2, strategy="ddp")
    launch_ddp(ddp)
    (one_rank,), expected = online_results(one)
    ranks, weights = online_results(ddp)
    assert one_rank["optimizer_steps"] == ranks[0]["optimizer_steps"] == ranks[1]["optimizer_steps"] == 4
    initial = _tiny_initial_weights()
    assert max((expected[k] - initial[k]).abs().max().item() for k in expected) > 1e-3  # it trained
    worst = max((weights[k] - expected[k]).abs().max().item() for k in expected)
    assert worst < WEIGHT_TOLERANCE, worst


def test_ddp_with_each_prompt_once_matches_one_process_in_rows(tmp_path):
    """``online.share_prompt`` (prompts once, samples packed to their real tokens) under 2
    processes ends with the weights of 1 process scoring the usual rows."""
    one = online_spec(tmp_path, "one", ONLINE["dapo"], batch_size=8, engine="scripted")
    run(one)
    ddp = online_spec(tmp_path, "ddp", ONLINE["dapo"], batch_size=4, engine="scripted", devices=2, strategy="ddp",
                      share_prompt=True)
    launch_ddp(ddp)
    (one_rank,), expected = online_results(one)
    ranks, weights = online_results(ddp)
    assert one_rank["optimizer_steps"] == ranks[0]["optimizer_steps"] == ranks[1]["optimizer_steps"] == 4
    assert one_rank["packed_forwards"] == 0 and ranks[0]["packed_forwards"] > 0 and ranks[1]["packed_forwards"] > 0
    worst = max((weights[k] - expected[k]).abs().max().item() for k in expected)
    assert worst < WEIGHT_TOLERANCE, worst


def test_ddp_dapo_refill_keeps_processes_in_step(tmp_path):
    """DAPO's refill on real samples from the tiny model: each process draws its own extra
    prompts as its own groups come out flat, and both still take the same optimiser steps
    (a process that stepped fewer times would leave the other waiting in an all-reduce)."""
    algorithm = {"class_path": "grpo", "init_args": {"loss_type": "dapo", "refill_rounds": 2}}
    ddp = online_spec(tmp_path, "ddp", algorithm, batch_size=4, devices=2, strategy="ddp")
    launch_ddp(ddp)
    ranks, _ = online_results(ddp)
    assert ranks[0]["optimizer_steps"] == ranks[1]["optimizer_steps"] == 4
    assert ranks[0]["refill_prompts"] + ranks[1]["refill_prompts"] > 0  # flat groups were replaced


def _tiny_initial_weights() -> dict:
    from lightning_rlhf.models.builtin import resolve
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve("builtin:tiny-llama"))
    return {k: v.detach() for k, v in model.state_dict().items()}

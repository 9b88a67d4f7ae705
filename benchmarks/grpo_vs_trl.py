"""GRPO (and RLOO) end to end: lightning-rlhf against TRL's ``GRPOTrainer`` / ``RLOOTrainer``.

Both train the same model (by default the checkable toy world's SFT model,
``builtin:arithmetic``, built once and loaded from its directory by both) on the same
prompt rows (``{"prompt", "answer"}``), rewarded by the same function
(``lightning_rlhf.rewards.answers.exact_answer``), with the same group size, prompts per
step, completion length, sampling (temperature 1, no top-k/top-p), precision (fp32: this
CPU has no native bf16), optimiser (AdamW, the same learning rate, betas, eps and weight
decay, constant schedule, gradient-norm clipping at 1.0), loss (``grpo``: token mean per
sequence, then the batch mean; no KL term, so no reference model on either side; RLOO:
its default KL in the reward, 0.05 here on both sides), one optimiser step per
generation batch, and steps. Each side generates with its own code and no vLLM (TRL:
``model.generate``; ours: ``--engine``, by default ``DecodeEngine``: one prefill per
prompt for its group, finished rows dropped; ``--engine hf`` for ``model.generate``). Each run is its own process (its peak RSS is
its own) and runs alternate, ours then TRL's, ``--repeats`` times.

Reported, as medians with ranges: sampled completions per second over the steps after
the warm-up (steady state), the whole process's wall time from interpreter start
(imports, model loading and the warm-up included: what a user waits), peak RSS, and
where a step's time goes (generation, scoring, forward, backward, optimiser; the rest
is data, log-probs of the rollout, bookkeeping).

Run from the repository root (TRL only for the benchmark: ``pip install trl==1.16.0``)::

    python benchmarks/grpo_vs_trl.py                 # GRPO
    python benchmarks/grpo_vs_trl.py --algorithm rloo
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # the worker's wall time counts from here: imports are part of a user's wait

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

SCRIPT = Path(__file__).resolve()
PHASES = ("generation", "scoring", "forward", "backward", "optimizer")


class Breakdown:
    """Wall time spent inside wrapped methods, by phase, and each optimiser step's end."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.step_ends: list[float] = []
        self._step_started = 0.0

    def wrap(self, owner, name: str, phase: str) -> None:
        method = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - start
                self.calls[phase].append(round(time.perf_counter() - start, 4))

        setattr(owner, name, timed)

    def watch_optimizer(self, optimizer) -> None:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's and Lightning's wrappers
        optimizer.register_step_pre_hook(lambda *_: setattr(self, "_step_started", time.perf_counter()))

        def after(*_):
            now = time.perf_counter()
            self.seconds["optimizer"] += now - self._step_started
            self.step_ends.append(now)

        optimizer.register_step_post_hook(after)

    def summary(self, warmup: int, completions_per_step: int) -> dict:
        steps = len(self.step_ends)
        if steps <= warmup:
            raise RuntimeError(f"{steps} steps ran, but {warmup} are warm-up")
        seconds = self.step_ends[-1] - self.step_ends[warmup - 1]
        whole = self.step_ends[-1] - STARTED
        return {
            "steps": steps,
            "completions_per_second": round((steps - warmup) * completions_per_step / seconds, 3),
            "median_step_seconds": round(statistics.median(b - a for a, b in zip(self.step_ends[warmup - 1 : -1], self.step_ends[warmup:])), 3),
            # shares of all training steps' time (warm-up included: the phases are not timed per step)
            "phase_seconds": {phase: round(self.seconds[phase], 2) for phase in PHASES},
            "process_seconds_to_last_step": round(whole, 2),
            "phase_call_seconds": dict(self.calls),
        }


def reward(prompts, completions, answer, **_):
    """The exact-answer reward in TRL's calling convention (it passes more keywords)."""
    from lightning_rlhf.rewards.answers import exact_answer

    return exact_answer(prompts, completions, answer)


def run_ours(spec: dict) -> dict:
    import lightning_rlhf  # noqa: F401  first, as the command line imports it: its OpenMP setting precedes torch
    import lightning as L
    import torch

    from lightning_rlhf.data import PromptDataModule
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.modules.online import OnlineSettings
    from lightning_rlhf.modules.optim import OptimizerSettings
    from lightning_rlhf.modules.online_policy import OnlinePolicyModule
    from lightning_rlhf.registry import create_algorithm
    from lightning_rlhf.rewards import FunctionReward

    breakdown = Breakdown()
    torch.manual_seed(spec["seed"])
    settings = {"num_generations": spec["group"], "max_new_tokens": spec["max_new_tokens"]}
    if spec["algorithm"] == "grpo":
        algorithm = create_algorithm("grpo", loss_type="grpo", beta=0.0, **settings)
    else:
        algorithm = create_algorithm("rloo", beta=spec["rloo_beta"], **settings)
    module = OnlinePolicyModule(
        policy=ModelSettings(name_or_path=spec["model_dir"], dtype="float32"),
        compile_policy=spec.get("compile", False),
        algorithm=algorithm,
        optimizer=OptimizerSettings(learning_rate=spec["learning_rate"], schedule="constant", weight_decay=spec["weight_decay"]),
        reward=FunctionReward("lightning_rlhf.rewards.answers.exact_answer"),
        online=OnlineSettings(sample_table_every_n_steps=0, generation_batch_size=spec["prompts_per_step"] * spec["group"],
                              engine=spec["engine"], micro_batch_size=spec["micro_batch_size"],
                              share_prompt=spec["layout"] == "share-prompt", group_by_length=spec["layout"] == "by-length",
                              sampler_logps=spec.get("sampler_logps", False)),
    )
    data = PromptDataModule(path=spec["data_path"], batch_size=spec["prompts_per_step"], max_length=spec["max_length"],
                            max_prompt_length=spec["max_prompt_length"], seed=spec["seed"])

    class Instrument(L.Callback):
        def on_train_start(self, trainer, pl_module):
            breakdown.wrap(pl_module, "generate", "generation")
            breakdown.wrap(pl_module, "reward", "scoring")
            breakdown.wrap(pl_module, "policy_logps", "forward")
            breakdown.wrap(pl_module, "manual_backward", "backward")
            breakdown.watch_optimizer(trainer.optimizers[0])

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=spec["steps"], max_epochs=-1, precision="32-true",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[Instrument()])
    trainer.fit(module, datamodule=data)
    return breakdown.summary(spec["warmup"], spec["prompts_per_step"] * spec["group"])


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    breakdown = Breakdown()
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    rows = [json.loads(line) for line in Path(spec["data_path"]).read_text().splitlines()]
    completions = spec["prompts_per_step"] * spec["group"]
    common = dict(
        output_dir=str(Path(spec["work_dir"]) / f"trl-{spec['algorithm']}"), use_cpu=True, seed=spec["seed"],
        per_device_train_batch_size=completions, steps_per_generation=1, num_generations=spec["group"],
        max_completion_length=spec["max_new_tokens"], temperature=1.0, top_p=1.0, top_k=0,
        max_steps=spec["steps"], learning_rate=spec["learning_rate"], lr_scheduler_type="constant", warmup_steps=0,
        optim="adamw_torch", weight_decay=spec["weight_decay"], adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_grad_norm=1.0, bf16=False, gradient_checkpointing=False, disable_dropout=True, torch_compile=spec.get("compile", False),
        dataloader_num_workers=0, report_to="none", save_strategy="no", logging_steps=10, disable_tqdm=True,
    )
    if spec["algorithm"] == "grpo":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer

        args = Config(loss_type="grpo", beta=0.0, scale_rewards="group", **common)
    else:
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer

        args = Config(beta=spec["rloo_beta"], **common)
    trainer = Trainer(model=model, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)

    class Instrument(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            breakdown.watch_optimizer(trainer.optimizer)

    breakdown.wrap(trainer, "_generate", "generation")
    breakdown.wrap(trainer, "_calculate_rewards", "scoring")
    breakdown.wrap(trainer, "compute_loss", "forward")
    breakdown.wrap(trainer.accelerator, "backward", "backward")
    trainer.add_callback(Instrument())
    trainer.train()
    return breakdown.summary(spec["warmup"], completions)


WORKERS = {"ours": run_ours, "trl": run_trl}


def table(results: dict[str, list[dict]]) -> str:
    def cell(name, get, fmt):
        values = [get(r) for r in results[name]]
        return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})", statistics.median(values)

    measures = [("completions per second (steady state)", lambda r: r["completions_per_second"], "{:.1f}"),
                ("median step seconds", lambda r: r["median_step_seconds"], "{:.2f}"),
                ("process wall time to the last step, s", lambda r: r["process_seconds_to_last_step"], "{:.1f}"),
                ("peak RSS, MiB", lambda r: r["peak_rss_mib"], "{:.0f}")]
    measures += [(f"  {phase} (s, all steps)", lambda r, p=phase: r["phase_seconds"][p], "{:.2f}") for phase in PHASES]
    lines = ["| measure | ours | TRL | ours / TRL |", "|---|---|---|---|"]
    for label, get, fmt in measures:
        (ours, a), (theirs, b) = cell("ours", get, fmt), cell("trl", get, fmt)
        lines.append(f"| {label} | {ours} | {theirs} | {a / b:.2f}x |" if b else f"| {label} | {ours} | {theirs} | - |")
    return "\n".join(lines)


def command_line() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", default="grpo", choices=["grpo", "rloo"])
    parser.add_argument("--model", default="builtin:arithmetic", help="a builtin: name or a model directory")
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--group", type=int, default=8, help="completions per prompt (G, k)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="first optimiser steps left out of the steady-state rate")
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--rloo-beta", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=["hf", "decode"], default="decode",
                        help="our rollout engine (online.engine): decode prefills a prompt once for its group and drops "
                        "finished rows; hf calls transformers' generate as TRL does")
    parser.add_argument("--micro-batch-size", type=int, default=0,
                        help="ours: rows per forward/backward (gradient accumulation); 0 (default): the whole step's rows "
                        "at once, as TRL runs them")
    parser.add_argument("--layout", choices=["share-prompt", "by-length", "rows"], default="share-prompt",
                        help="ours: how the loss's forwards lay rows out: share-prompt (online.share_prompt: each prompt "
                        "once, its samples continuing from its cache, packed to their real tokens), by-length "
                        "(online.group_by_length: micro-batches of rows of like length), rows (one row per sample, micro-batches in rollout order, as TRL)")
    parser.add_argument("--sampler-logps", action="store_true", help="ours: online.sampler_logps (the engine's "
                        "log-probs of what it drew stand in for the rollout's policy forward: RLOO's KL in the reward)")
    parser.add_argument("--compile", action="store_true", help="both sides: torch.compile the training forward "
                        "(ours: compile_policy; TRL: torch_compile)")
    parser.add_argument("--out", default=None, help="default: runs/bench-<algorithm>")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    return parser


def write_spec(args: argparse.Namespace, work: Path) -> Path:
    """The workers' spec for ``args`` (this script's command line), with its prompt file, in ``work``."""
    from lightning_rlhf.models.builtin import resolve
    from lightning_rlhf.toyworld.arithmetic import write_prompts

    # Enough distinct train-split prompts for every step, in file order (neither side repeats one).
    write_prompts(work / "prompts.jsonl", args.steps * args.prompts_per_step, "train", args.seed)
    spec = {"algorithm": args.algorithm, "model_dir": resolve(args.model), "data_path": str(work / "prompts.jsonl"),
            "work_dir": str(work), "prompts_per_step": args.prompts_per_step, "group": args.group,
            "max_new_tokens": args.max_new_tokens, "max_prompt_length": 24, "max_length": 24 + args.max_new_tokens,
            "steps": args.steps, "warmup": args.warmup, "learning_rate": args.learning_rate,
            "weight_decay": args.weight_decay, "rloo_beta": args.rloo_beta, "seed": args.seed, "engine": args.engine,
            "micro_batch_size": args.micro_batch_size or None, "layout": args.layout, "compile": args.compile,
            "sampler_logps": args.sampler_logps}
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    return spec_path


def main() -> None:
    args = command_line().parse_args()
    if args.worker:
        harness.emit(WORKERS[args.worker](json.loads(Path(args.spec).read_text())))
        return

    out = Path(args.out or f"runs/bench-{args.algorithm}")
    out.mkdir(parents=True, exist_ok=True)
    spec_path = write_spec(args, Path(tempfile.mkdtemp(prefix="bench-grpo-")))
    spec = json.loads(spec_path.read_text())
    print(f"{args.algorithm}: {args.model} ({spec['model_dir']}), {args.prompts_per_step} prompts x {args.group} completions "
          f"per step, {args.max_new_tokens} new tokens at most, {args.steps} steps ({args.warmup} warm-up), fp32; "
          f"ours: engine {args.engine}, micro-batches of {args.micro_batch_size or 'all'} rows, layout {args.layout}"
          f"{', the engine log-probs' if args.sampler_logps else ''}")
    results: dict[str, list[dict]] = {side: [] for side in WORKERS}
    for repeat in range(args.repeats):
        for side in WORKERS:
            before = harness.load_average()
            result = harness.run_worker(harness.worker_command(SCRIPT, side, spec_path), timeout=1800)
            result["load_before"] = before
            results[side].append(result)
            print(f"  [{repeat + 1}/{args.repeats}] {side:>4}: {result['completions_per_second']:7.1f} completions/s  "
                  f"whole process {result['process_seconds_to_last_step']:6.1f} s  peak {result['peak_rss_mib']:6.0f} MiB  "
                  f"(load {before})", flush=True)
    text = table(results)
    print(f"\n{text}\n\nmachine: {harness.machine()}; kernels: {_capability()}; load average after: {harness.load_average()}")
    (out / "results.json").write_text(json.dumps({"spec": spec, "machine": harness.machine(), "kernels": _capability(),
                                                  "results": results, "table": text, "command": ["python", *sys.argv]}, indent=1))
    print(f"wrote {out / 'results.json'}")


def _capability() -> str:
    from lightning_rlhf.cpu import cpu_capability

    return cpu_capability()


if __name__ == "__main__":
    main()

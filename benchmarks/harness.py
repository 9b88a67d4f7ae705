"""What the speed benchmarks share: the model, the synthetic data, the timing, the memory
reading, the matrix-product peak and the alternating runner.

Fairness rules every comparison here keeps (and prints):

- one model: a Llama-shaped causal LM built from a ``LlamaConfig`` with a fixed seed and
  saved once; both trainers load the same files;
- one data set: synthetic text written once as JSONL. The tokenizer is byte-level (one
  token per ASCII character), so a row's token count is its character count plus EOS in
  either trainer; each run reports the real (non-padding) tokens it trained on and the
  runner refuses a comparison in which they differ;
- one process per run, so peak memory (the process's peak resident set, ``ru_maxrss``)
  is that run's alone; runs alternate A B A B ..., so a change in machine load hits both;
- each run starts from the environment the benchmark was started with, not the one this
  process has by then: importing ``lightning_rlhf`` may set ``OMP_WAIT_POLICY``
  (``lightning_rlhf.wait_policy``), which is lightning-rlhf's choice and must not become
  the other trainer's;
- throughput is measured between the end of the last warm-up step and the end of the
  last step (optimizer step, data loading and logging included), from callbacks in each
  trainer.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shlex
import statistics
import string
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCHMARK_RESULT "
# The environment before lightning_rlhf is imported here (the benchmarks import this module first).
USER_ENVIRONMENT = dict(os.environ) if "lightning_rlhf" not in sys.modules else None


# -- the model --------------------------------------------------------------------------


@dataclass
class ModelShape:
    """A 34M-parameter Llama: 8 layers of width 512 and an 8192-entry output head.

    The byte-level tokenizer uses 262 ids; the embedding and head have ``vocab_size``
    rows all the same (a padded vocabulary, as Qwen and Llama 3 pad theirs), so the
    output head costs what a real 8k-vocabulary head costs.
    """

    hidden_size: int = 512
    num_layers: int = 8
    num_heads: int = 8
    intermediate_size: int = 1376
    vocab_size: int = 8192
    seed: int = 0


def build_model(directory: Path, shape: ModelShape) -> dict:
    """Write the model and its tokenizer to ``directory``; returns parameter counts."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lightning_rlhf.models.tiny import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    config = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(shape.seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return {"parameters": total, "matmul_parameters": total - embedding}


# -- the data -----------------------------------------------------------------------------

_WORDS = None


def _text(rng: random.Random, length: int) -> str:
    """``length`` printable ASCII characters (so ``length`` byte tokens), word-like."""
    global _WORDS
    if _WORDS is None:
        letters = random.Random(1234)
        _WORDS = ["".join(letters.choices(string.ascii_lowercase, k=letters.randint(2, 9))) for _ in range(2000)]
    out = ""
    while len(out) < length:
        out += " " + rng.choice(_WORDS)
    return out[:length]


def preference_rows(n: int, prompt_lengths: tuple[int, int], completion_lengths: tuple[int, int], seed: int) -> list[dict]:
    """``n`` prompt/chosen/rejected rows with lengths drawn uniformly from the ranges."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = _text(rng, rng.randint(*prompt_lengths))
        chosen = _text(rng, rng.randint(*completion_lengths))
        rejected = chosen
        while rejected == chosen:
            rejected = _text(rng, rng.randint(*completion_lengths))
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def sft_rows(n: int, prompt_lengths: tuple[int, int], completion_lengths: tuple[int, int], seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"prompt": _text(rng, rng.randint(*prompt_lengths)), "completion": _text(rng, rng.randint(*completion_lengths))}
        for _ in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# -- measuring -------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """Peak resident set of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def matmul_peak(n: int = 2048, seconds: float = 2.0) -> dict[str, float]:
    """Best GFLOP/s of an ``n x n`` matrix product in bf16 and in fp32 on this machine, with
    the threads torch uses here: the peak that model FLOPs utilisation is measured against."""
    import torch

    out = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            a @ b
        best, stop = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < stop:
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
        out[name] = round(best, 1)
    return out


@dataclass
class StepLog:
    """Wall-clock time at the end of every optimizer step, and the tokens of each step's batch."""

    ends: list[float] = field(default_factory=list)
    cpu_ends: list[float] = field(default_factory=list)  # process CPU time, all threads
    data_tokens: list[int] = field(default_factory=list)  # the usual layout's real tokens: the data trained on
    real_tokens: list[int] = field(default_factory=list)  # non-padding tokens the model computed
    padded_tokens: list[int] = field(default_factory=list)  # all tokens the model computed

    def end_step(self) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())

    def record_batch(self, batch: dict) -> None:
        """``batch``: the usual layout (``attention_mask``), and the one-row-per-pair layout
        the model runs instead when present (``shared_prompt_segments``, padding -1)."""
        self.data_tokens.append(int(batch["attention_mask"].sum()))
        computed = batch.get("shared_prompt_segments")
        if computed is None:
            self.real_tokens.append(self.data_tokens[-1])
            self.padded_tokens.append(int(batch["attention_mask"].numel()))
        else:
            self.real_tokens.append(int((computed >= 0).sum()))
            self.padded_tokens.append(int(computed.numel()))

    def summary(self, warmup: int, pairs_per_step: int) -> dict:
        steps = len(self.ends)
        if steps <= warmup:
            raise RuntimeError(f"{steps} steps ran, but {warmup} are warm-up")
        first = warmup - 1 if warmup else 0
        seconds = self.ends[-1] - self.ends[first]
        cpu_seconds = self.cpu_ends[-1] - self.cpu_ends[first]
        measured = steps - 1 - first
        data = sum(self.data_tokens[steps - measured : steps])
        real = sum(self.real_tokens[steps - measured : steps])
        padded = sum(self.padded_tokens[steps - measured : steps])
        step_times = [b - a for a, b in zip(self.ends[steps - measured - 1 : -1], self.ends[steps - measured :])]
        return {
            "steps": steps,
            "measured_steps": measured,
            "seconds": round(seconds, 3),
            "rows_per_second": round(measured * pairs_per_step / seconds, 3),
            # less sensitive to other jobs on the machine than wall time (not immune: they share caches)
            "rows_per_cpu_second": round(measured * pairs_per_step / cpu_seconds, 3),
            "data_tokens_per_second": round(data / seconds, 1),
            "real_tokens_per_second": round(real / seconds, 1),
            "padding_fraction": round(1 - real / padded, 4) if padded else 0.0,
            "median_step_seconds": round(statistics.median(step_times), 3),
            "all_data_tokens": sum(self.data_tokens),
        }


def emit(result: dict) -> None:
    """A worker's last words: its result as one JSON line the runner picks out."""
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# -- running ---------------------------------------------------------------------------


def worker_command(script: Path, name: str, spec_path: Path) -> list[str]:
    return [sys.executable, str(script), "--worker", name, "--spec", str(spec_path)]


def run_worker(command: list[str], env: dict | None = None, timeout: float = 900) -> dict:
    """Run one worker process, in the environment the benchmark started with changed by
    ``env`` (a None value unsets); its result line, or an error naming the command."""
    if USER_ENVIRONMENT is None:
        raise RuntimeError("benchmarks.harness must be imported before lightning_rlhf (it keeps the user's environment)")
    environment = {k: v for k, v in {**USER_ENVIRONMENT, **(env or {})}.items() if v is not None}
    proc = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (proc.stdout[-3000:] + "\n" + proc.stderr[-6000:]).strip()
    raise RuntimeError(f"worker failed (exit {proc.returncode}): {shlex.join(command)}\n{tail}")


def alternate(commands: dict[str, list[str]], repeats: int, env: dict | None = None, log=print) -> dict[str, list[dict]]:
    """Run each command ``repeats`` times, interleaved A B A B ..., with the load average
    before each run."""
    results: dict[str, list[dict]] = {name: [] for name in commands}
    for repeat in range(repeats):
        for name, command in commands.items():
            before = load_average()
            result = run_worker(command, env)
            result["load_before"] = before
            results[name].append(result)
            log(
                f"  [{repeat + 1}/{repeats}] {name:>6}: {result['rows_per_second']:8.3f} rows/s  "
                f"peak {result['peak_rss_mib']:7.1f} MiB  (load {before})"
            )
    return results


def spread(values: list[float], digits: int = 1) -> str:
    """median (min-max)"""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def comparison_table(results: dict[str, list[dict]], ours: str, theirs: str, unit: str) -> str:
    """A Markdown table: median and range of each measure, and the ratio of medians."""

    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    rows = [
        (f"{unit} per second", "rows_per_second", "{:.3f}"),
        (f"{unit} per CPU-second (all threads)", "rows_per_cpu_second", "{:.3f}"),
        ("data tokens per second (prompt counted per sequence)", "data_tokens_per_second", "{:.0f}"),
        ("computed non-padding tokens per second", "real_tokens_per_second", "{:.0f}"),
        ("padding share of computed tokens", "padding_fraction", "{:.3f}"),
        ("median step seconds", "median_step_seconds", "{:.3f}"),
        ("peak RSS, MiB", "peak_rss_mib", "{:.0f}"),
        ("model FLOPs utilisation", "mfu", "{:.3f}"),
    ]
    lines = [f"| measure | {ours} | {theirs} | {ours} / {theirs} |", "|---|---|---|---|"]
    for label, key, fmt in rows:
        if not all(key in r for r in results[ours] + results[theirs]):
            continue
        a, b = med(ours, key), med(theirs, key)
        span_a = f"{fmt.format(a)} ({fmt.format(min(r[key] for r in results[ours]))}-{fmt.format(max(r[key] for r in results[ours]))})"
        span_b = f"{fmt.format(b)} ({fmt.format(min(r[key] for r in results[theirs]))}-{fmt.format(max(r[key] for r in results[theirs]))})"
        ratio = f"{a / b:.2f}x" if b else "-"
        lines.append(f"| {label} | {span_a} | {span_b} | {ratio} |")
    return "\n".join(lines)


def machine() -> str:
    """CPU model, cores torch uses, and the library versions that matter here."""
    import platform

    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        flags = ", AVX-512 BF16" if "avx512_bf16" in info else ""
    except OSError:
        pass
    versions = []
    for name in ("torch", "transformers", "lightning", "trl"):
        try:
            module = __import__(name)
            versions.append(f"{name} {module.__version__}")
        except ImportError:
            pass
    return f"{cpu}{flags}, {torch.get_num_threads()} threads, {platform.python_implementation()} {platform.python_version()}, " + ", ".join(versions)


# -- what the comparison scripts share ---------------------------------------------------


def common_arguments(parser, workers: dict, unit: str, batch_size: int, out: str) -> None:
    """The arguments every ours-against-TRL script takes."""
    import argparse

    parser.add_argument("--out", default=out)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"{unit} per step")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run; the data is steps x batch rows, one epoch")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing (compilation included)")
    parser.add_argument("--prompt-lengths", type=int, nargs=2, default=[8, 96], metavar=("MIN", "MAX"))
    parser.add_argument("--completion-lengths", type=int, nargs=2, default=[8, 96], metavar=("MIN", "MAX"))
    parser.add_argument("--precision", default=None, choices=["bf16-mixed", "32-true", "bf16-true"],
                        help="default: bf16-mixed where this CPU has native bf16, 32-true where bf16 is emulated "
                             "(lightning_rlhf.cpu.fast_precision); bf16-true (bf16 weights) runs ours only: TRL "
                             "would train another model dtype")
    parser.add_argument("--group-by-length", default="ours", choices=["ours", "both", "none"],
                        help="which side batches rows of similar length (ours: group_by_length; TRL: "
                             "train_sampling_strategy=group_by_length on a length column)")
    parser.add_argument("--compile", default="ours", choices=["ours", "both", "none"],
                        help="which side compiles its model (ours: compile_policy; TRL: torch_compile)")
    parser.add_argument("--attention", default="eager", choices=["eager", "sdpa"],
                        help="the model's attention implementation, both sides (eager: matrix products and a softmax, "
                             "which compilation fuses; sdpa: PyTorch's fused kernel)")
    parser.add_argument("--learning-rate", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sides", nargs="+", default=list(workers), choices=list(workers))
    parser.add_argument("--ours-module", default="{}", help="JSON: extra PolicyModule arguments")
    parser.add_argument("--ours-data", default="{}", help="JSON: extra data module arguments")
    parser.add_argument("--ours-optimizer", default="{}", help="JSON: extra OptimizerSettings arguments")
    parser.add_argument("--worker", choices=list(workers), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)


def resolve_precision(requested: str | None) -> str:
    """The precision to run: the one asked for, else the fast one on this CPU; printed with why."""
    from lightning_rlhf.cpu import bf16_slowdown, cpu_capability, fast_precision

    precision = requested or fast_precision()
    how = "as asked" if requested else "chosen for this CPU"
    print(f"precision: {precision} ({how}; {cpu_capability()} kernels, a bf16 matrix product measured "
          f"{bf16_slowdown():.2f}x the fp32 time)")
    return precision


def base_spec(args, work: Path) -> dict:
    args.precision = resolve_precision(args.precision)
    ours_module = {"compile_policy": args.compile in ("ours", "both"), **json.loads(args.ours_module)}
    ours_data = {"group_by_length": args.group_by_length in ("ours", "both"), **json.loads(args.ours_data)}
    return {
        "model_dir": str(work / "model"), "data_path": str(work / "data.jsonl"), "work_dir": str(work),
        "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "precision": args.precision,
        "attention": args.attention, "learning_rate": args.learning_rate, "seed": args.seed,
        "max_length": max(args.prompt_lengths) + max(args.completion_lengths) + 1,
        "max_prompt_length": max(args.prompt_lengths),
        "ours_module": ours_module, "ours_data": ours_data, "ours_optimizer": json.loads(args.ours_optimizer),
        "trl_group_by_length": args.group_by_length == "both", "trl_compile": args.compile == "both",
    }


def run_lightning_rlhf(spec: dict, algorithm, data_class) -> dict:
    """Our side of a comparison: ``algorithm`` trained by PolicyModule on ``data_class`` rows."""
    import lightning_rlhf  # noqa: F401  first, as the command line imports it: its OpenMP setting precedes torch
    import torch

    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.modules.optim import OptimizerSettings
    from lightning_rlhf.modules.policy import PolicyModule

    start = time.perf_counter()
    torch.manual_seed(spec["seed"])
    module = PolicyModule(
        policy=ModelSettings(name_or_path=spec["model_dir"], attn_implementation=spec["attention"]),
        algorithm=algorithm,
        optimizer=OptimizerSettings(learning_rate=spec["learning_rate"], schedule="constant", **spec["ours_optimizer"]),
        **spec["ours_module"],
    )
    data = data_class(
        path=spec["data_path"], batch_size=spec["batch_size"], max_length=spec["max_length"],
        max_prompt_length=spec["max_prompt_length"], seed=spec["seed"], **spec["ours_data"],
    )
    result = lightning_fit(spec, module, data, StepLog())
    result["total_seconds"] = round(time.perf_counter() - start, 2)
    return result


def lightning_fit(spec: dict, module, data, log: StepLog) -> dict:
    """Train ``module`` on ``data`` for the spec's steps on the CPU, timing each step."""
    import lightning as L

    class Timer(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            log.end_step()
            log.record_batch(batch)

    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=spec["steps"], max_epochs=-1, precision=spec["precision"],
        gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Timer()],
    )
    trainer.fit(module, datamodule=data)
    return log.summary(spec["warmup"], spec["batch_size"])


def trl_options(spec: dict, rows: list[dict], length) -> dict:
    """TRL config arguments every comparison shares; ``length(row)`` feeds the length
    column when TRL groups by length."""
    options = {
        "output_dir": str(Path(spec["work_dir"]) / "trl"), "use_cpu": True, "seed": spec["seed"],
        "per_device_train_batch_size": spec["batch_size"], "max_steps": spec["steps"],
        "learning_rate": spec["learning_rate"], "lr_scheduler_type": "constant", "warmup_steps": 0,
        "optim": "adamw_torch_fused", "max_grad_norm": 1.0, "bf16": spec["precision"] == "bf16-mixed",
        "gradient_checkpointing": False, "padding_free": False, "max_length": spec["max_length"],
        "dataloader_num_workers": 0, "report_to": "none", "save_strategy": "no", "logging_steps": 10,
        "disable_tqdm": True, "torch_compile": spec["trl_compile"],
    }
    if spec["trl_group_by_length"]:  # the Trainer's LengthGroupedSampler, on a length column
        for row in rows:
            row["length"] = length(row)
        # the column must survive the Trainer's column pruning; the collators ignore it
        options.update(train_sampling_strategy="group_by_length", length_column_name="length", remove_unused_columns=False)
    return options


def trl_train(trainer, log: StepLog, spec: dict) -> dict:
    """Time a TRL trainer's steps and record its batches' tokens."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            log.end_step()

    collate = trainer.data_collator

    def recording_collator(examples):
        batch = collate(examples)
        log.record_batch(batch)
        return batch

    trainer.data_collator = recording_collator
    trainer.add_callback(Timer())
    trainer.train()
    return log.summary(spec["warmup"], spec["batch_size"])


def run_comparison(args, script: Path, rows: list[dict], unit: str, spec: dict, flops_note: str = "") -> dict:
    """Build the model, write the data and spec, alternate the sides, print and save the results."""
    import shlex as _shlex

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(spec["work_dir"])
    shape = ModelShape()
    print(f"load average before: {load_average()}")
    peak = matmul_peak()
    print(f"matrix-product peak on this machine: bf16 {peak['bf16']} GFLOP/s, fp32 {peak['fp32']} GFLOP/s")
    counts = build_model(work / "model", shape)
    write_jsonl(work / "data.jsonl", rows)
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    print(f"model: {counts['parameters'] / 1e6:.1f}M parameters ({asdict(shape)}); {len(rows)} {unit}, prompt "
          f"{args.prompt_lengths} and completion {args.completion_lengths} characters (= byte tokens)")
    commands = {side: worker_command(script, side, spec_path) for side in args.sides}
    results = alternate(commands, args.repeats)

    flops_peak = peak["bf16" if args.precision.startswith("bf16") else "fp32"] * 1e9
    for runs in results.values():
        for r in runs:
            r["mfu"] = round(6 * counts["matmul_parameters"] * r["real_tokens_per_second"] / flops_peak, 4)
    if len(args.sides) == 2 and len({r["all_data_tokens"] for runs in results.values() for r in runs}) != 1:
        raise SystemExit("the two sides trained on different tokens: not a comparison")
    table = comparison_table(results, *args.sides, unit=unit) if len(args.sides) == 2 else ""
    print()
    print(table)
    print()
    print(f"machine: {machine()}; load average after: {load_average()}")
    print(f"MFU = 6 x {counts['matmul_parameters'] / 1e6:.1f}M matmul parameters (all but the input embedding) x computed "
          f"non-padding tokens/s / the {'bf16' if args.precision.startswith('bf16') else 'fp32'} matmul peak {flops_peak / 1e9:.1f} GFLOP/s{flops_note}")
    print(f"benchmark: {_shlex.join(['python', *sys.argv])}")
    for side, command in commands.items():
        print(f"{side}: {_shlex.join(command)}")
    summary = {"spec": spec, "shape": asdict(shape), "parameters": counts, "matmul_peak_gflops": peak,
               "machine": machine(), "results": results, "table": table, "command": ["python", *sys.argv]}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out / 'results.json'}")
    return summary

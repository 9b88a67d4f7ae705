"""DPO training speed and peak memory: lightning-rlhf against TRL's ``DPOTrainer``.

Both train the same ~30M-parameter Llama (``harness.ModelShape``, built from a
``LlamaConfig`` and saved once) on the same synthetic preference pairs, with the same
batch size, sequence lengths, precision, loss (sigmoid DPO, the same beta), optimizer
(AdamW, the same learning rate, betas and eps, fused kernel in both, constant schedule,
gradient-norm clipping at 1.0), dropout off, gradient checkpointing off in both,
padding-free off in both (TRL's is unavailable since its DPO refactor; ours packs
nothing). The reference model is in both: by default its log-probabilities are
precomputed once per example in both (TRL ``precompute_ref_log_probs=True``; ours the
cached reference of ``PolicyModule``, ``reference_cache``); ``--reference inline`` runs
the reference forward at every step in both instead. Each run is its own process
(so peak memory is its own) and runs alternate, ours then TRL's, ``--repeats`` times.

Run from the repository root (TRL only for the benchmark: ``pip install trl==1.16.0``)::

    python benchmarks/dpo_vs_trl.py

It prints one line per run, a table of medians with ranges and the ratios, the exact
command of each side, and writes ``--out``/results.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

SCRIPT = Path(__file__).resolve()


def run_ours(spec: dict) -> dict:
    import lightning as L
    import torch

    from lightning_rlhf.data import PreferenceDataModule
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.modules.optim import OptimizerSettings
    from lightning_rlhf.modules.policy import PolicyModule
    from lightning_rlhf.registry import create_algorithm

    log = harness.StepLog()

    class Timer(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            log.end_step()
            log.record_batch(batch["attention_mask"])

    start = time.perf_counter()
    torch.manual_seed(spec["seed"])
    module = PolicyModule(
        policy=ModelSettings(name_or_path=spec["model_dir"], attn_implementation=spec["attention"]),
        algorithm=create_algorithm("dpo", beta=spec["beta"]),
        optimizer=OptimizerSettings(learning_rate=spec["learning_rate"], schedule="constant"),
        **spec["ours_module"],
    )
    data = PreferenceDataModule(
        path=spec["data_path"], batch_size=spec["batch_size"], max_length=spec["max_length"],
        max_prompt_length=spec["max_prompt_length"], seed=spec["seed"], **spec["ours_data"],
    )
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=spec["steps"], max_epochs=-1, precision=spec["precision"],
        gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Timer()],
    )
    trainer.fit(module, datamodule=data)
    result = log.summary(spec["warmup"], spec["batch_size"])
    result["total_seconds"] = round(time.perf_counter() - start, 2)
    return result


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    log = harness.StepLog()

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            log.end_step()

    start = time.perf_counter()
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], attn_implementation=spec["attention"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    rows = [json.loads(line) for line in Path(spec["data_path"]).read_text().splitlines()]
    grouping = {"torch_compile": True} if spec["trl_compile"] else {}
    if spec["trl_group_by_length"]:  # the Trainer's LengthGroupedSampler, on a length column
        for row in rows:
            row["length"] = len(row["prompt"]) + max(len(row["chosen"]), len(row["rejected"]))
        # the column must survive the Trainer's column pruning; the collator ignores it
        grouping.update(train_sampling_strategy="group_by_length", length_column_name="length", remove_unused_columns=False)
    args = DPOConfig(
        output_dir=str(Path(spec["work_dir"]) / "trl"), use_cpu=True, seed=spec["seed"],
        per_device_train_batch_size=spec["batch_size"], max_steps=spec["steps"],
        learning_rate=spec["learning_rate"], lr_scheduler_type="constant", warmup_steps=0,
        optim="adamw_torch_fused", max_grad_norm=1.0, beta=spec["beta"], loss_type=["sigmoid"],
        bf16=spec["precision"] == "bf16-mixed", gradient_checkpointing=False, padding_free=False,
        precompute_ref_log_probs=spec["reference"] == "precompute", max_length=spec["max_length"],
        disable_dropout=True, dataloader_num_workers=0, report_to="none", save_strategy="no",
        logging_steps=10, disable_tqdm=True, **grouping,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    collate = trainer.data_collator

    def recording_collator(examples):
        batch = collate(examples)
        log.record_batch(batch["attention_mask"])
        return batch

    trainer.data_collator = recording_collator
    trainer.add_callback(Timer())
    trainer.train()
    result = log.summary(spec["warmup"], spec["batch_size"])
    result["total_seconds"] = round(time.perf_counter() - start, 2)
    return result


WORKERS = {"ours": run_ours, "trl": run_trl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-dpo")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating")
    parser.add_argument("--batch-size", type=int, default=4, help="preference pairs per step")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing (compilation included)")
    parser.add_argument("--prompt-lengths", type=int, nargs=2, default=[8, 96], metavar=("MIN", "MAX"))
    parser.add_argument("--completion-lengths", type=int, nargs=2, default=[8, 96], metavar=("MIN", "MAX"))
    parser.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "32-true"])
    parser.add_argument("--reference", default="precompute", choices=["precompute", "inline"],
                        help="reference log-probs precomputed once per example in both, or a reference forward every step in both")
    parser.add_argument("--group-by-length", default="ours", choices=["ours", "both", "none"],
                        help="which side batches rows of similar length (ours: group_by_length; TRL: "
                             "train_sampling_strategy=group_by_length)")
    parser.add_argument("--compile", default="ours", choices=["ours", "both", "none"],
                        help="which side compiles its model (ours: compile_policy; TRL: torch_compile)")
    parser.add_argument("--attention", default="eager", choices=["eager", "sdpa"],
                        help="attention implementation of the model, both sides (eager: matrix products and a softmax, "
                             "which compilation fuses; sdpa: PyTorch's fused kernel)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--learning-rate", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sides", nargs="+", default=["ours", "trl"], choices=list(WORKERS))
    parser.add_argument("--ours-module", default="{}", help="JSON: extra PolicyModule arguments")
    parser.add_argument("--ours-data", default="{}", help="JSON: extra PreferenceDataModule arguments")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        harness.emit(WORKERS[args.worker](spec))
        return

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    shape = harness.ModelShape()
    print(f"load average before: {harness.load_average()}")
    peak = harness.matmul_peak()
    print(f"matrix-product peak on this machine: bf16 {peak['bf16']} GFLOP/s, fp32 {peak['fp32']} GFLOP/s")
    counts = harness.build_model(work / "model", shape)
    rows = harness.preference_rows(
        args.steps * args.batch_size, tuple(args.prompt_lengths), tuple(args.completion_lengths), args.seed
    )
    harness.write_jsonl(work / "pairs.jsonl", rows)
    longest = max(args.prompt_lengths) + max(args.completion_lengths) + 1
    ours_module = {"compile_policy": args.compile in ("ours", "both"), **json.loads(args.ours_module)}
    if args.reference == "inline":
        ours_module.setdefault("cache_reference_logps", False)
    ours_data = {"group_by_length": args.group_by_length in ("ours", "both"), **json.loads(args.ours_data)}
    spec = {
        "model_dir": str(work / "model"), "data_path": str(work / "pairs.jsonl"), "work_dir": str(work),
        "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "precision": args.precision,
        "reference": args.reference, "attention": args.attention, "beta": args.beta, "learning_rate": args.learning_rate, "seed": args.seed,
        "max_length": longest, "max_prompt_length": max(args.prompt_lengths),
        "ours_module": ours_module, "ours_data": ours_data, "trl_group_by_length": args.group_by_length == "both",
        "trl_compile": args.compile == "both",
    }
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    print(f"model: {counts['parameters'] / 1e6:.1f}M parameters ({asdict(shape)}), {len(rows)} pairs, "
          f"prompt {args.prompt_lengths} and completion {args.completion_lengths} characters (= byte tokens)")
    commands = {side: harness.worker_command(SCRIPT, side, spec_path) for side in args.sides}
    results = harness.alternate(commands, args.repeats)

    flops_peak = peak["bf16" if args.precision.startswith("bf16") else "fp32"] * 1e9
    for runs in results.values():
        for r in runs:
            r["mfu"] = round(6 * counts["matmul_parameters"] * r["real_tokens_per_second"] / flops_peak, 4)
    if len(args.sides) == 2 and len({r["all_real_tokens"] for runs in results.values() for r in runs}) != 1:
        raise SystemExit("the two sides trained on different tokens: not a comparison")
    table = harness.comparison_table(results, *args.sides, unit="pairs") if len(args.sides) == 2 else ""
    print()
    print(table)
    print()
    print(f"machine: {harness.machine()}; load average after: {harness.load_average()}")
    print(f"MFU = 6 x {counts['matmul_parameters'] / 1e6:.1f}M matmul parameters x real tokens/s / bf16 matmul peak "
          f"{peak['bf16']} GFLOP/s (the reference's forward is not counted)")
    print(f"benchmark: {shlex.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    for side, command in commands.items():
        print(f"{side}: {shlex.join(command)}   # spec: {spec_path}")
    (out / "results.json").write_text(json.dumps(
        {"spec": spec, "shape": asdict(shape), "parameters": counts, "matmul_peak_gflops": peak,
         "machine": harness.machine(), "results": results, "table": table,
         "command": [sys.executable, *sys.argv]}, indent=1))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()

"""DPO training speed and peak memory: lightning-rlhf against TRL's ``DPOTrainer``.

Both train the same 34M-parameter Llama (``harness.ModelShape``, built from a
``LlamaConfig`` and saved once) on the same synthetic preference pairs, with the same
batch size, sequence lengths, precision (bf16 autocast), attention implementation, loss
(sigmoid DPO, the same beta), optimizer (fused AdamW, the same learning rate, betas and
eps, constant schedule, gradient-norm clipping at 1.0), dropout off, gradient
checkpointing off, padding-free off in both (TRL's is unavailable since its DPO
refactor; ours packs nothing, but by default runs each pair as one row with the prompt
once, ``PreferenceDataModule.share_prompt``: the same log-probs for fewer tokens;
``--no-share-prompt`` turns it off). The reference model is in both: by default its
log-probabilities are precomputed once per example in both (TRL
``precompute_ref_log_probs=True``; ours ``PolicyModule.cache_reference_logps``), and
throughput is measured over training steps after the warm-up; ``--reference inline``
runs a reference forward at every step in both instead. By default ours batches rows
of similar length and compiles its transformer while TRL runs as it comes;
``--group-by-length both --compile both`` turns TRL's equivalents on
(``train_sampling_strategy=group_by_length``, ``torch_compile``). Each run is its own
process (so peak memory is its own) and runs alternate, ours then TRL's, ``--repeats``
times.

Run from the repository root (TRL only for the benchmark: ``pip install trl==1.16.0``)::

    python benchmarks/dpo_vs_trl.py

It prints one line per run, a table of medians with ranges and the ratios, the exact
command of each side, and writes ``--out``/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

SCRIPT = Path(__file__).resolve()


def run_ours(spec: dict) -> dict:
    from lightning_rlhf.data import PreferenceDataModule
    from lightning_rlhf.registry import create_algorithm

    return harness.run_lightning_rlhf(spec, create_algorithm("dpo", beta=spec["beta"]), PreferenceDataModule)


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    start = time.perf_counter()
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], attn_implementation=spec["attention"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    rows = [json.loads(line) for line in Path(spec["data_path"]).read_text().splitlines()]
    options = harness.trl_options(spec, rows, lambda row: len(row["prompt"]) + max(len(row["chosen"]), len(row["rejected"])))
    args = DPOConfig(
        beta=spec["beta"], loss_type=["sigmoid"], disable_dropout=True,
        precompute_ref_log_probs=spec["reference"] == "precompute", **options,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    result = harness.trl_train(trainer, harness.StepLog(), spec)
    result["total_seconds"] = round(time.perf_counter() - start, 2)
    return result


WORKERS = {"ours": run_ours, "trl": run_trl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.common_arguments(parser, WORKERS, unit="pairs", batch_size=4, out="runs/bench-dpo")
    parser.add_argument("--reference", default="precompute", choices=["precompute", "inline"],
                        help="reference log-probs precomputed once per example in both, or a reference forward every step in both")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--no-share-prompt", action="store_true",
                        help="ours runs chosen and rejected as two rows (the usual layout) instead of one row per pair")
    args = parser.parse_args()
    if args.worker:
        harness.emit(WORKERS[args.worker](json.loads(Path(args.spec).read_text())))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    rows = harness.preference_rows(
        args.steps * args.batch_size, tuple(args.prompt_lengths), tuple(args.completion_lengths), args.seed
    )
    spec = harness.base_spec(args, work)
    spec.update(reference=args.reference, beta=args.beta)
    spec["ours_data"].setdefault("share_prompt", not args.no_share_prompt)
    if args.reference == "inline":
        spec["ours_module"].setdefault("cache_reference_logps", False)
    note = "; the reference's forward is not counted" + (" (precomputed in both)" if args.reference == "precompute" else "")
    harness.run_comparison(args, SCRIPT, rows, "pairs", spec, flops_note=note)


if __name__ == "__main__":
    main()

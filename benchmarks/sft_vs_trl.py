"""SFT training speed and peak memory: lightning-rlhf against TRL's ``SFTTrainer``.

Both train the same 34M-parameter Llama (``harness.ModelShape``, built from a
``LlamaConfig`` and saved once) on the same synthetic prompt/completion rows, with the
same batch size, sequence lengths, precision (bf16 autocast), loss (mean next-token
NLL over the batch's completion tokens: TRL's ``completion_only_loss``, ours ``sft``),
optimizer (fused AdamW, same learning rate, constant schedule, gradient-norm clipping
at 1.0), dropout off, gradient checkpointing off, packing and padding-free off in both.
By default ours batches rows of similar length and compiles its transformer, TRL runs
as it comes; ``--group-by-length both --compile both`` turns TRL's equivalents on.
Each run is its own process (peak memory is its own); runs alternate.

Run from the repository root (TRL only for the benchmark: ``pip install trl==1.16.0``)::

    python benchmarks/sft_vs_trl.py
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
    from lightning_rlhf.data import SFTDataModule
    from lightning_rlhf.registry import create_algorithm

    return harness.run_lightning_rlhf(spec, create_algorithm("sft"), SFTDataModule)


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    start = time.perf_counter()
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], attn_implementation=spec["attention"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    rows = [json.loads(line) for line in Path(spec["data_path"]).read_text().splitlines()]
    options = harness.trl_options(spec, rows, lambda row: len(row["prompt"]) + len(row["completion"]))
    args = SFTConfig(completion_only_loss=True, packing=False, **options)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    result = harness.trl_train(trainer, harness.StepLog(), spec)
    result["total_seconds"] = round(time.perf_counter() - start, 2)
    return result


WORKERS = {"ours": run_ours, "trl": run_trl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.common_arguments(parser, WORKERS, unit="sequences", batch_size=8, out="runs/bench-sft")
    args = parser.parse_args()
    if args.worker:
        harness.emit(WORKERS[args.worker](json.loads(Path(args.spec).read_text())))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    rows = harness.sft_rows(args.steps * args.batch_size, tuple(args.prompt_lengths), tuple(args.completion_lengths), args.seed)
    harness.run_comparison(args, SCRIPT, rows, "sequences", harness.base_spec(args, work))


if __name__ == "__main__":
    main()

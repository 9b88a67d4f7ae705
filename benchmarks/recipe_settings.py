"""A recipe run end to end as a user runs it, under several settings: pairs per second of the
whole process (start-up, data setup and any compilation included) and its peak memory.

    python benchmarks/recipe_settings.py --recipe recipes/dpo/toyworld.yaml \
        --data runs/canonical/seed0/pairs.jsonl --repeats 3 \
        --variant "off=--data.group_by_length=false --data.share_prompt=false" \
        --variant "shipped=" \
        --variant "compiled=--model.compile_policy=true"

Each variant's overrides are added to ``lightning-rlhf fit --config RECIPE --data.path DATA``
(no logger, no progress bar, no export, ``--trainer.max_epochs EPOCHS``). Every run is its own
process, the variants alternate (A B C A B C ...) so that a change in the machine's load hits
each, and the table gives medians with their ranges. Peak memory is the child process's
``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_once(recipe: str, data: str, epochs: int, overrides: list[str]) -> dict:
    command = [sys.executable, "-m", "lightning_rlhf.cli", "fit", "--config", recipe, f"--data.path={data}",
               f"--trainer.max_epochs={epochs}", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
               "--trainer.enable_checkpointing=false", "--model.export_dir=null", *overrides]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "WANDB_MODE": "offline"})
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    stderr = process.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{stderr[-3000:]}")
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--data", required=True, help="the preference pairs to train on")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=OVERRIDES",
                        help="a name and the command-line overrides it adds (may be empty)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    from lightning_rlhf.cpu import cpu_capability

    variants = {}
    for text in args.variant:
        name, _, overrides = text.partition("=")
        variants[name] = shlex.split(overrides)
    rows = sum(1 for line in Path(args.data).read_text().splitlines() if line.strip())
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, overrides in variants.items():
            result = run_once(args.recipe, args.data, args.epochs, overrides)
            result["pairs_per_second"] = rows * args.epochs / result["seconds"]
            results[name].append(result)
            print(f"repeat {repeat + 1}/{args.repeats} {name}: {result['seconds']:.1f} s, "
                  f"{result['pairs_per_second']:.1f} pairs/s, peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
    print(f"\n{args.recipe} on {rows} pairs x {args.epochs} epoch(s), whole process, {cpu_capability()} kernels, "
          f"medians of {args.repeats} (ranges):")
    print("| variant | overrides | pairs/s | wall (s) | peak RSS (MiB) |\n|---|---|---|---|---|")
    for name, runs in results.items():
        def cell(key, digits=1):
            values = [r[key] for r in runs]
            return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"
        print(f"| {name} | `{shlex.join(variants[name]) or '(as shipped)'}` | {cell('pairs_per_second')} | {cell('seconds')} | "
              f"{cell('peak_rss_mib', 0)} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"recipe": args.recipe, "rows": rows, "epochs": args.epochs,
                                              "cpu_capability": cpu_capability(), "variants": variants, "results": results},
                                             indent=2) + "\n")


if __name__ == "__main__":
    main()

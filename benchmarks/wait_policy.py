"""How OpenMP's wait policy changes a GRPO step's speed, alone and beside a busy process.

Runs our worker of ``benchmarks/grpo_vs_trl.py`` (the checkable world's model, 16 prompts
x 8 completions a step) under each wait setting, with torch imported before the package
so that the package's own choice (``lightning_rlhf.wait_policy``) does not apply: first
with nothing else running, then beside one ``python -c "while True: pass"``. Settings
alternate, ``--repeats`` times in each condition; each run prints its completions per
second and the process's wall time.

Run from the repository root::

    python benchmarks/wait_policy.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

SETTINGS = {
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "default": {},
    "default, GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "default, GOMP_SPINCOUNT=100000": {"GOMP_SPINCOUNT": "100000"},
}
GRPO = Path(__file__).resolve().parent / "grpo_vs_trl.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--conditions", nargs="+", default=["alone", "beside a busy loop"],
                        choices=["alone", "beside a busy loop"])
    parser.add_argument("--out", default="runs/wait-policy/results.json")
    args = parser.parse_args()

    import grpo_vs_trl

    # the GRPO benchmark's defaults, in micro-batches of 32 rows as the README's table was measured
    grpo_args = grpo_vs_trl.command_line().parse_args(
        ["--steps", str(args.steps), "--warmup", str(min(3, args.steps - 1)), "--micro-batch-size", "32"])
    spec_path = grpo_vs_trl.write_spec(grpo_args, Path(tempfile.mkdtemp(prefix="bench-wait-")))
    # torch first: the environment given decides how its threads wait, not the package's choice
    command = [sys.executable, "-c", "import torch, runpy, sys; sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')", str(GRPO), "--worker", "ours", "--spec", str(spec_path)]
    results = {condition: {name: [] for name in args.settings} for condition in args.conditions}
    for condition in args.conditions:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition != "alone" else None
        try:
            for _ in range(args.repeats):
                for name in args.settings:
                    result = harness.run_worker(command, {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None, **SETTINGS[name]})
                    results[condition][name].append({k: result[k] for k in ("completions_per_second", "process_seconds_to_last_step")})
                    print(f"  {condition:>18} | {name:<32} {result['completions_per_second']:7.1f} completions/s  "
                          f"process {result['process_seconds_to_last_step']:6.1f} s", flush=True)
        finally:
            if busy is not None:
                busy.kill()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": harness.machine(), "command": ["python", *sys.argv], "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

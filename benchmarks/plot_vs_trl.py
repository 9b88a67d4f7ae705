"""The races against TRL in one figure: each repeat's throughput, ours beside TRL's, for every
results file given, and where a GRPO-family step's time goes.

Reads the files ``benchmarks/*_vs_trl.py`` write (``runs/bench-*/results.json``, kept in
``docs/results/``); the left panel draws every repeat as a point and the median as a bar,
as ours / TRL throughput; the right one each side's median time per optimiser step, split
into the phases the GRPO benchmark times (the rest is data, rollout log-probs and
bookkeeping). Run from the repository root::

    python benchmarks/plot_vs_trl.py docs/results/grpo-vs-trl-avx512.json docs/results/rloo-vs-trl-avx512.json \\
        docs/results/dpo-vs-trl-avx512.json docs/results/sft-vs-trl-avx512.json --out docs/figures/speed_vs_trl_avx512.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PHASES = ("generation", "scoring", "forward", "backward", "optimizer")
SIDES = {"ours": "#1f77b4", "trl": "#ff7f0e"}


UNITS = {"DPO": "pairs/s", "SFT": "sequences/s"}


def throughput(result: dict) -> float:
    """A repeat's throughput: completions per second online, rows (pairs for DPO, sequences
    for SFT) per second offline."""
    return result["completions_per_second"] if "completions_per_second" in result else result["rows_per_second"]


def kernels(data: dict) -> str:
    machine = data.get("machine", "")
    return data.get("kernels") or ("AVX512" if "AVX-512" in machine else "AVX2" if "AVX2" in machine else "?")


def label(data: dict) -> str:
    spec = data.get("spec", {})
    name = spec.get("algorithm") or spec.get("loss") or Path(data.get("command", ["?", "?"])[1]).stem.split("_")[0]
    return str(name).upper()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = [json.loads(path.read_text()) for path in args.results]
    paths = sorted({kernels(data) for data in runs})
    online = [data for data in runs if "completions_per_second" in data["results"]["ours"][0]]

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.3, 1]})
    top = 2.0
    for i, data in enumerate(runs):
        trl_median = statistics.median(throughput(r) for r in data["results"]["trl"])
        medians = {}
        for j, (side, colour) in enumerate(SIDES.items()):
            values = [throughput(r) for r in data["results"][side]]
            medians[side] = statistics.median(values)
            x = i + (j - 0.5) * 0.38
            left.bar(x, medians[side] / trl_median, width=0.36, color=colour, alpha=0.7, label=side if i == 0 else None)
            left.scatter([x] * len(values), [v / trl_median for v in values], color="black", s=10, zorder=3)
        unit = UNITS.get(label(data), "completions/s")
        highest = max(throughput(r) for r in data["results"]["ours"]) / trl_median
        top = max(top, highest)
        left.text(i - 0.19, highest + 0.05, f"{medians['ours'] / trl_median:.2f}x\n"
                  f"{medians['ours']:.0f} {unit}", ha="center", fontsize=8)
    left.axhline(1.5, color="grey", linestyle="--", linewidth=0.8)
    left.text(len(runs) - 0.5, 1.52, "1.5x", color="grey", fontsize=8, ha="right")
    left.set_xticks(range(len(runs)), [label(data) for data in runs])
    left.set_ylabel("throughput / TRL's median (points: repeats)")
    left.set_ylim(0, top + 0.5)  # room for the labels above the highest repeat
    left.set_title("ours against TRL 1.16, same model, data and settings")
    left.legend(loc="upper right", fontsize=8)

    colours = plt.get_cmap("tab10")
    for i, data in enumerate(online):
        steps = data["results"]["ours"][0]["steps"]
        for j, side in enumerate(SIDES):
            result = data["results"][side]
            step = statistics.median(r["median_step_seconds"] for r in result)
            bottom = 0.0
            x = i + (j - 0.5) * 0.38
            for k, phase in enumerate(PHASES):
                seconds = statistics.median(r["phase_seconds"][phase] for r in result) / steps
                right.bar(x, seconds, width=0.36, bottom=bottom, color=colours(k))
                bottom += seconds
            right.bar(x, max(step - bottom, 0.0), width=0.36, bottom=bottom, color="lightgrey")
            right.text(x, max(step, bottom) + 0.01, side, ha="center", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(k)) for k in range(len(PHASES))]
    handles.append(plt.Rectangle((0, 0), 1, 1, color="lightgrey"))
    right.legend(handles, [*PHASES, "rest of the step"], fontsize=8, loc="upper left")
    right.set_xticks(range(len(online)), [label(data) for data in online])
    right.set_ylabel("seconds per optimiser step (medians)")
    right.set_title("where a step's time goes (medians)")
    figure.suptitle(f"2 CPU threads; GRPO and RLOO in fp32, DPO and SFT in their recipes' precision; kernels {', '.join(paths)}",
                    fontsize=9)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

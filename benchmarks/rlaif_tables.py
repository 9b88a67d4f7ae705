"""The README's RLAIF table: how far the toy judge's labels are from gold, and what DPO
learns from them, each figure a mean with its 95% interval over seeds (whole toy worlds).

    lightning-rlhf pipeline recipes/pipelines/toy-rlaif.yaml   # judge + gold labels, two DPO runs, evaluation
    python benchmarks/rlaif_tables.py runs/toy-rlaif           # the table, docs/results/rlaif-<cpu>.json, the figure

Per seed s (its own world ``builtin:toyworld-seed<s>`` and judge ``builtin:toyworld-judge-seed<s>``):

- *agreement on held-out pairs*: two SFT samples for each held-out prompt (sampling seed
  s + 1000, not the evaluation's), pairs the gold reward ties on left out; the share where
  the judge (P > 0.5, both orders averaged) picks the gold winner;
- *agreement on the pairs it labelled*: the training prompts labelled both by the judge and
  by gold in the pipeline (the same samples), the share with the same chosen answer;
- the pipeline's evaluations of DPO on judge labels and DPO on gold labels against SFT:
  gold win rate, mean gold reward, the judge's win rate, KL.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lightning_rlhf.cpu import cpu_capability
from lightning_rlhf.pipeline_report import format_figure
from lightning_rlhf.stats import mean_interval


def held_out_agreement(seed: int, prompts: list[str]) -> dict:
    from lightning_rlhf.commands.core import load_policy
    from lightning_rlhf.models.builtin import seeded
    from lightning_rlhf.rewards.judge import PairwiseJudge
    from lightning_rlhf.toyworld.judge import agreement

    judge = PairwiseJudge(seeded("builtin:toyworld-judge", seed), batch_size=64)
    policy, tokenizer = load_policy(seeded("builtin:toyworld", seed))
    return agreement(judge, policy, tokenizer, prompts, seed=seed + 1000)


def label_agreement(judge_file: Path, gold_file: Path) -> dict:
    """Prompts both labellings kept (each skips its own ties): the share with the same chosen answer."""
    def chosen(path: Path) -> dict[str, str]:
        return {row["prompt"]: row["chosen"] for row in map(json.loads, path.read_text().splitlines())}

    judge, gold = chosen(judge_file), chosen(gold_file)
    both = sorted(judge.keys() & gold.keys())
    return {"pairs": len(both), "agreement": sum(judge[p] == gold[p] for p in both) / len(both)}


def interval(values: list[float]) -> dict:
    return mean_interval(values).as_dict() | {"values": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline_dir", help="output folder of recipes/pipelines/toy-rlaif.yaml")
    parser.add_argument("--out", default=None, help="JSON to write (default docs/results/rlaif-<cpu>.json)")
    parser.add_argument("--figure", default="docs/figures/rlaif.png")
    args = parser.parse_args()
    root = Path(args.pipeline_dir)
    summary = json.loads((root / "evaluation.json").read_text())
    evaluations = {e["policy_label"]: e for e in summary["evaluations"]}
    seeds = summary["seeds"]
    prompts = [json.loads(line)["prompt"] for line in (root / "prompts-heldout.jsonl").read_text().splitlines()]

    held_out = [held_out_agreement(seed, prompts) for seed in seeds]
    labelled = [label_agreement(root / f"seed{s}" / "judge-preferences.jsonl", root / f"seed{s}" / "gold-preferences.jsonl")
                for s in seeds]
    result = {
        "cpu_capability": cpu_capability(), "seeds": seeds,
        "held_out_agreement": interval([a["agreement"] for a in held_out]) | {"pairs": [a["pairs"] for a in held_out]},
        "judge_confidence": interval([a["mean_confidence"] for a in held_out]),
        "label_agreement": interval([a["agreement"] for a in labelled]) | {"pairs": [a["pairs"] for a in labelled]},
        "evaluations": {label: e["figures"] for label, e in evaluations.items()},
    }
    out = Path(args.out or f"docs/results/rlaif-{result['cpu_capability']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwrote {out} and {figure(result, args.figure)}")


def table(result: dict) -> str:
    n = len(result["seeds"])
    lines = [f"RLAIF on the toy world, mean ± 95% interval over {n} seeds (kernel path: {result['cpu_capability']})", "",
             "| judge against gold | agreement |", "|---|---|",
             f"| held-out prompts, two SFT samples each ({sum(result['held_out_agreement']['pairs'])} pairs) | "
             f"{format_figure(result['held_out_agreement'], '.1f', percent=True)} |",
             f"| the training pairs it labelled ({sum(result['label_agreement']['pairs'])} pairs) | "
             f"{format_figure(result['label_agreement'], '.1f', percent=True)} |",
             "", "| DPO trained on | gold win rate vs SFT | mean gold reward | judge's win rate vs SFT | KL to SFT (nats) |",
             "|---|---|---|---|---|"]
    for label, f in result["evaluations"].items():
        lines.append(f"| {label} | {format_figure(f['win_rate'], '.1f', percent=True)} | {format_figure(f['policy_mean_reward'], '+.3f')} | "
                     f"{format_figure(f['judge_win_rate'], '.1f', percent=True)} | {format_figure(f['kl'], '.2f')} |")
    first = next(iter(result["evaluations"].values()))
    lines.append(f"| (SFT) | 50.0% | {format_figure(first['reference_mean_reward'], '+.3f')} | 50.0% | 0 |")
    return "\n".join(lines)


def figure(result: dict, path: str) -> Path:
    from lightning_rlhf.plots import Point, reward_vs_kl

    points = [Point(label, f["kl"]["mean"], f["policy_mean_reward"]["mean"], f["kl"]["half_width"], f["policy_mean_reward"]["half_width"],
                    seeds=tuple(zip(f["kl"]["values"], f["policy_mean_reward"]["values"])))
              for label, f in result["evaluations"].items()]
    sft = next(iter(result["evaluations"].values()))["reference_mean_reward"]
    agreement = result["held_out_agreement"]
    note = (f"{len(result['seeds'])} toy worlds (x: each), 200 held-out prompts, bars: 95% intervals; judge-gold agreement "
            f"{agreement['mean']:.1%} ± {agreement['half_width']:.1%}; CPU kernel path: {result['cpu_capability']}")
    return reward_vs_kl(points, path, "DPO on the toy judge's labels and on gold labels (same samples)", note=note,
                        baseline=Point("SFT", 0.0, sft["mean"], 0.0, sft["half_width"]), legend="lower right")


if __name__ == "__main__":
    main()

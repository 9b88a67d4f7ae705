"""Held-out pairwise accuracy of a reward model trained on gold-labelled toy-world pairs.

The toy world's gold reward (VADER sentiment of the completion) plays the human labeller:

1. ``--prompts`` train-split toy-world prompts; ``--k`` completions each, sampled from the
   SFT model ``builtin:toyworld`` (``lightning-rlhf label --mode all-pairs``): every pair
   of a prompt's samples whose gold scores differ, chosen = the higher;
2. the prompts are split 80/20 (``--heldout-fraction``), so no held-out prompt or
   completion is seen in training;
3. ``recipes/reward/toyworld.yaml`` trains a Bradley-Terry reward model (initialised from
   the SFT model, fresh scalar head) through ``lightning-rlhf fit``;
4. the exported model is loaded as a ``RewardModelSource`` and scores every held-out
   pair: accuracy is the share it orders as the gold reward does.

Run from the repository root (about 10 minutes on 2 CPU cores, toy models included)::

    python benchmarks/reward_accuracy.py --out runs/reward-accuracy

It prints and writes ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def split_by_prompt(rows: list[dict], heldout_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    prompts = sorted({r["prompt"] for r in rows})
    random.Random(seed).shuffle(prompts)
    heldout = set(prompts[: round(len(prompts) * heldout_fraction)])
    return [r for r in rows if r["prompt"] not in heldout], [r for r in rows if r["prompt"] in heldout]


def pairwise_accuracy(source, rows: list[dict]) -> tuple[float, list[float]]:
    prompts = [r["prompt"] for r in rows]
    chosen = source(prompts, [r["chosen"] for r in rows])
    rejected = source(prompts, [r["rejected"] for r in rows])
    correct = (chosen > rejected).float()
    return correct.mean().item(), correct.tolist()


def accuracy_by_gap(rows: list[dict], correct: list[float], bins: int = 4) -> list[dict]:
    """Accuracy within quartiles of the gold gap: small gaps are the hard pairs."""
    order = sorted(range(len(rows)), key=lambda i: rows[i]["margin"])
    out = []
    for b in range(bins):
        part = order[b * len(order) // bins : (b + 1) * len(order) // bins]
        gaps = [rows[i]["margin"] for i in part]
        out.append({"gold_gap": [round(min(gaps), 4), round(max(gaps), 4)], "pairs": len(part),
                    "accuracy": round(sum(correct[i] for i in part) / len(part), 4)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/reward-accuracy")
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--k", type=int, default=4, help="samples per prompt; all pairs with distinct gold scores are used")
    parser.add_argument("--heldout-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", default="recipes/reward/toyworld.yaml")
    parser.add_argument("--reuse-pairs", action="store_true", help="keep <out>/pairs.jsonl from an earlier run")
    args = parser.parse_args()

    from lightning_rlhf.cli import main as cli
    from lightning_rlhf.rewards import RewardModelSource
    from lightning_rlhf.toyworld.corpus import write_prompts

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pairs_path = out / "pairs.jsonl"
    if not (args.reuse_pairs and pairs_path.exists()):
        write_prompts(out / "prompts.jsonl", args.prompts, split="train", seed=args.seed)
        cli(["label", "--policy", "builtin:toyworld", "--prompts", str(out / "prompts.jsonl"), "--reward", "gold",
             "--k", str(args.k), "--mode", "all-pairs", "--seed", str(args.seed), "--output", str(pairs_path)])
    labelled = time.perf_counter()
    train, heldout = split_by_prompt(read_jsonl(pairs_path), args.heldout_fraction, args.seed)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "heldout.jsonl", heldout)

    export = out / "reward-model"
    cli(["fit", "--config", args.recipe,
         f"--data.init_args.path={out / 'train.jsonl'}", f"--data.init_args.val_path={out / 'heldout.jsonl'}",
         f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
         f"--model.init_args.export_dir={export}"])
    trained = time.perf_counter()

    source = RewardModelSource(str(export), batch_size=64, device="cpu")
    accuracy, correct = pairwise_accuracy(source, heldout)
    results = {
        "heldout_accuracy": round(accuracy, 4),
        "heldout_pairs": len(heldout),
        "heldout_prompts": len({r["prompt"] for r in heldout}),
        "train_pairs": len(train),
        "train_prompts": len({r["prompt"] for r in train}),
        "accuracy_by_gold_gap_quartile": accuracy_by_gap(heldout, correct),
        "seconds": {"label": round(labelled - started, 1), "fit": round(trained - labelled, 1),
                    "total": round(time.perf_counter() - started, 1)},
        "command": f"python benchmarks/reward_accuracy.py --out {args.out} --prompts {args.prompts} --k {args.k} "
                   f"--seed {args.seed}",
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

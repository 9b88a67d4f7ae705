"""Process reward models on the checkable toy world: step accuracy, and best-of-n selected by
a PRM against an outcome reward model (ORM) and against the verifier.

Per seed s:

1. the SFT model (``builtin:arithmetic``) samples ``--train-samples`` completions per
   training prompt (sampling seed s); the world's verifier labels every step
   (``toyworld.arithmetic.label_steps``) and every outcome (the final answer);
2. a PRM (``prm`` plugin, steps split on ".", the SFT model as backbone) is trained on
   the step labels, and an ORM on the outcome labels (the same plugin with the whole
   completion as its one step: a classifier of the final answer), same data, same steps,
   same seed. ``--scorer implicit`` (default): ``ImplicitPRMModule``, a step's logit is
   beta times the log-likelihood ratio of the fine-tuned LM to the SFT model over the
   step's tokens, plus a bias (``models.implicit_prm``); ``--scorer head``:
   ``RewardModule``'s classification head read at the step's last token;
3. on the held-out prompts the SFT model samples ``max(--ns)`` completions each (seed
   1000 + s); reported: the PRM's step accuracy and wrong-step F1 against the verifier's
   labels, the ORM's outcome accuracy, and held-out accuracy of best-of-n for each n
   when the PRM (min and product over steps), the ORM, or the verifier (any right answer
   among n: the ceiling) picks the completion; n = 1 is the SFT model's accuracy.

Each figure is a mean with its 95% t-interval over seeds. Writes ``<out>/prm.json`` and
``<out>/prm.md`` and the figure ``--figure``::

    python benchmarks/prm_tables.py --seeds 0 1 2 --figure docs/figures/prm_best_of_n.png

Seeds run as separate processes (``--seeds 0 --out runs/prm-tables-p0``, ...) are joined
with ``--merge runs/prm-tables-p*/prm.json --out runs/prm-tables --figure ...``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEPARATOR = "."


def sample(model_dir: str, prompts: list[str], n: int, seed: int, max_new_tokens: int) -> list[list[str]]:
    from lightning_rlhf.commands.core import load_policy
    from lightning_rlhf.engine import HFEngine, SamplingSettings

    model, tokenizer = load_policy(model_dir)
    engine = HFEngine(model, tokenizer, batch_size=128)
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    samples = engine.generate(ids, n, SamplingSettings(temperature=1.0, max_new_tokens=max_new_tokens), seed=seed)
    return [[s.text for s in group] for group in samples]


def verdicts(prompt: str, completion: str) -> tuple[list[bool], bool]:
    """The verifier's step labels and whether the final answer is right."""
    from lightning_rlhf.data.stepwise import split_steps
    from lightning_rlhf.rewards.answers import exact_answer
    from lightning_rlhf.toyworld.arithmetic import label_steps, parse_problem

    problem = parse_problem(prompt)
    return label_steps(problem, split_steps(completion, SEPARATOR)), exact_answer([prompt], [completion], [problem.answer])[0] == 1.0


def write_rows(path: Path, prompts: list[str], completions: list[list[str]], outcome: bool) -> int:
    from lightning_rlhf.data.stepwise import split_steps

    rows = 0
    with path.open("w") as file:
        for prompt, group in zip(prompts, completions):
            for completion in group:
                if not completion.strip():
                    continue
                steps, right = verdicts(prompt, completion)
                if outcome:
                    row = {"prompt": prompt, "completions": [completion], "labels": [right]}
                else:
                    pieces = split_steps(completion, SEPARATOR)
                    keep = [i for i, piece in enumerate(pieces) if piece.strip()]  # a trailing "." leaves no step
                    row = {"prompt": prompt, "completions": [pieces[i] for i in keep], "labels": [steps[i] for i in keep]}
                    if len(keep) != len(pieces):
                        continue  # an empty step inside: not a layout the data reads (rare)
                file.write(json.dumps(row) + "\n")
                rows += 1
    return rows


def train(rows: Path, separator: str, seed: int, out: Path, args) -> str:
    import lightning as L

    from lightning_rlhf.data import StepwiseDataModule
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.modules.optim import OptimizerSettings
    from lightning_rlhf.modules.implicit_prm_module import ImplicitPRMModule
    from lightning_rlhf.modules.reward_module import RewardModule
    from lightning_rlhf.registry import create_algorithm

    L.seed_everything(seed, verbose=False)
    settings, algorithm = ModelSettings(name_or_path=args.model), create_algorithm("prm", wrong_step_weight=args.wrong_step_weight)
    optimizer = OptimizerSettings(learning_rate=args.learning_rate, warmup_ratio=0.05)
    if args.scorer == "implicit":
        module = ImplicitPRMModule(settings, algorithm, optimizer, export_dir=str(out), beta=args.beta)
    else:
        module = RewardModule(settings, algorithm, optimizer, export_dir=str(out))
    data = StepwiseDataModule(path=str(rows), step_separator=separator, batch_size=32, max_length=64, seed=seed)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=args.epochs, precision="32-true", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    return str(out)


def run_seed(seed: int, args, work: Path) -> dict:
    from lightning_rlhf.models.builtin import resolve
    from lightning_rlhf.rewards.steps import StepRewardSource, aggregate_steps
    from lightning_rlhf.toyworld.arithmetic import problems

    started = time.perf_counter()
    model_dir = resolve(args.model)
    train_prompts = [p.prompt for p in problems(args.train_prompts, "train", seed=100 + seed)]
    heldout_prompts = [p.prompt for p in problems(args.heldout_prompts, "heldout", seed=0)]
    directory = work / f"seed{seed}"
    directory.mkdir(parents=True, exist_ok=True)
    print(f"[seed {seed}] sampling {args.train_samples} x {len(train_prompts)} training completions", flush=True)
    train_completions = sample(model_dir, train_prompts, args.train_samples, seed, args.max_new_tokens)
    step_rows = write_rows(directory / "steps.jsonl", train_prompts, train_completions, outcome=False)
    write_rows(directory / "outcomes.jsonl", train_prompts, train_completions, outcome=True)
    print(f"[seed {seed}] training the PRM ({step_rows} solutions) and the ORM", flush=True)
    prm = StepRewardSource(train(directory / "steps.jsonl", SEPARATOR, seed, directory / "prm", args), step_separator=SEPARATOR,
                           batch_size=256)
    orm = StepRewardSource(train(directory / "outcomes.jsonl", "", seed, directory / "orm", args), step_separator="",
                           aggregation="last", batch_size=256)

    n_max = max(args.ns)
    print(f"[seed {seed}] sampling {n_max} x {len(heldout_prompts)} held-out completions and scoring them", flush=True)
    heldout = sample(model_dir, heldout_prompts, n_max, 1000 + seed, args.max_new_tokens)
    flat_prompts = [p for p, group in zip(heldout_prompts, heldout) for _ in group]
    flat = [c for group in heldout for c in group]
    prm_steps = prm.step_scores(flat_prompts, flat)
    orm_scores = orm(flat_prompts, flat).tolist()
    labels = [verdicts(p, c) for p, c in zip(flat_prompts, flat)]

    pairs = [(prob >= 0.5, label) for steps, (step_labels, _) in zip(prm_steps, labels) for prob, label in zip(steps, step_labels)]
    found = sum(1 for predicted_right, right in pairs if not predicted_right and not right)
    flagged = sum(1 for predicted_right, _ in pairs if not predicted_right)
    wrong = sum(1 for _, right in pairs if not right)
    result = {
        "prm_step_accuracy": sum(p == r for p, r in pairs) / len(pairs),
        "prm_wrong_step_f1": 2 * found / max(flagged + wrong, 1),
        "wrong_step_share": wrong / len(pairs),
        "orm_outcome_accuracy": sum((s >= 0.5) == right for s, (_, right) in zip(orm_scores, labels)) / len(labels),
    }
    selectors = {
        "PRM (min over steps)": [aggregate_steps(s, "min") for s in prm_steps],
        "PRM (product over steps)": [aggregate_steps(s, "product") for s in prm_steps],
        "ORM": orm_scores,
        "verifier (any right: the ceiling)": [float(right) for _, right in labels],
    }
    rng = random.Random(seed)  # ties (equal scores) are broken at random
    for name, scores in selectors.items():
        for n in args.ns:
            right = 0
            for i in range(len(heldout_prompts)):
                candidates = list(range(i * n_max, i * n_max + n))
                values = [scores[j] if scores[j] == scores[j] else -1.0 for j in candidates]  # NaN: no step, last
                best = max(values)
                chosen = rng.choice([j for j, v in zip(candidates, values) if v == best])
                right += labels[chosen][1]
            result[f"best_of_{n}/{name}"] = right / len(heldout_prompts)
    result["seconds"] = time.perf_counter() - started
    print(f"[seed {seed}] {json.dumps({k: round(v, 4) for k, v in result.items()})}", flush=True)
    return result


def summarise(per_seed: list[dict], ns: list[int]) -> tuple[dict, str]:
    from lightning_rlhf.stats import mean_interval

    keys = [k for k in per_seed[0] if k != "seconds"]
    summary = {k: mean_interval([r[k] for r in per_seed]).as_dict() for k in keys}

    def cell(key: str) -> str:
        s = summary[key]
        return f"{100 * s['mean']:.1f}% ± {100 * s['half_width']:.1f}%"

    selectors = sorted({k.split("/", 1)[1] for k in keys if k.startswith("best_of_")}, key=lambda n: ("verifier" in n, n))
    lines = ["| selector | " + " | ".join(f"n = {n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    for name in selectors:
        lines.append(f"| {name} | " + " | ".join(cell(f"best_of_{n}/{name}") for n in ns) + " |")
    lines += ["", "| measure | value |", "|---|---|",
              f"| PRM step accuracy (held-out SFT samples, verifier's labels) | {cell('prm_step_accuracy')} |",
              f"| PRM wrong-step F1 | {cell('prm_wrong_step_f1')} |",
              f"| share of wrong steps | {cell('wrong_step_share')} |",
              f"| ORM outcome accuracy | {cell('orm_outcome_accuracy')} |"]
    return summary, "\n".join(lines)


def figure(summary: dict, ns: list[int], path: str, note: str) -> None:
    from lightning_rlhf.plots import Curve, accuracy_vs_n

    names = sorted({k.split("/", 1)[1] for k in summary if k.startswith("best_of_")}, key=lambda n: ("verifier" in n, n))
    curves = [Curve(name, ns, [summary[f"best_of_{n}/{name}"]["mean"] for n in ns],
                    [summary[f"best_of_{n}/{name}"]["half_width"] for n in ns]) for name in names]
    accuracy_vs_n(curves, path, "Best-of-n on held-out sums: who picks the completion", note=note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", default="builtin:arithmetic")
    parser.add_argument("--train-prompts", type=int, default=1000)
    parser.add_argument("--train-samples", type=int, default=4, help="SFT completions per training prompt")
    parser.add_argument("--heldout-prompts", type=int, default=200)
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--wrong-step-weight", type=float, default=1.0, help="the prm plugin's weight of wrong steps (and wrong outcomes)")
    parser.add_argument("--scorer", choices=["implicit", "head"], default="implicit",
                        help="how the PRM and the ORM score a step: implicit (beta * log-likelihood ratio of the "
                             "fine-tuned LM to the SFT model, models.implicit_prm) or head (a classification head at the step's end)")
    parser.add_argument("--beta", type=float, default=1.0, help="--scorer implicit: beta of the log-likelihood ratio")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--out", default="runs/prm-tables")
    parser.add_argument("--figure", default=None)
    parser.add_argument("--merge", nargs="+", default=None, metavar="PRM_JSON",
                        help="run nothing: join the per-seed results of these prm.json files (seeds run as separate "
                             "processes, with the same settings) into one table, json and figure under --out")
    args = parser.parse_args()

    from lightning_rlhf.cpu import cpu_capability

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kernels = cpu_capability()
    if args.merge:
        parts = [json.loads(Path(path).read_text()) for path in args.merge]
        per_seed = [result for part in parts for result in part["per_seed"]]
        args.seeds = [seed for part in parts for seed in part["seeds"]]
        args.ns, args.heldout_prompts = parts[0]["args"]["ns"], parts[0]["args"]["heldout_prompts"]
        args.scorer = parts[0]["args"].get("scorer", "head")
        kernels = "/".join(sorted({part["cpu_capability"] for part in parts}))
        runs = {"runs": [{"command": part["command"], "args": part["args"]} for part in parts]}
    else:
        per_seed, runs = [run_seed(seed, args, out) for seed in args.seeds], {"args": vars(args)}
    summary, table = summarise(per_seed, args.ns)
    text = f"{table}\n\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), mean ± 95% t-interval; {kernels} kernels"
    print("\n" + text)
    (out / "prm.md").write_text(text + "\n")
    (out / "prm.json").write_text(json.dumps({"cpu_capability": kernels, "seeds": args.seeds, **runs,
                                              "per_seed": per_seed, "summaries": summary, "command": ["python", *sys.argv]},
                                             indent=1))
    if args.figure:
        figure(summary, args.ns, args.figure, f"{len(args.seeds)} seeds, 95% intervals; {kernels} kernels; "
                                              f"{args.heldout_prompts} held-out prompts; PRM and ORM: {args.scorer} scorer")
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()

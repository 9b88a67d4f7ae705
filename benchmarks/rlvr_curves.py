"""Held-out accuracy against sampled completions: GRPO on the checkable world with the
outcome reward (exact answer), with the verifier's step rewards (``process_rewards``) and
with PRIME's online implicit PRM (``online_process_rewards``, the rlvr table's
``grpo_prm_online``).

Per seed and reward, ``recipes/grpo/arithmetic.yaml`` trains as the rlvr table does (60
rollouts of 128 completions) and keeps a checkpoint every 15 rollouts (1920 sampled
completions); each checkpoint is exported and evaluated on the held-out prompts with the
exact-answer reward (sampling seed s). Writes ``<out>/curves.json`` and ``--figure``::

    python benchmarks/rlvr_curves.py --seeds 0 1 2 --figure docs/figures/rlvr_steps_vs_outcome.png

``--rewards`` runs some of them (none: only ``--merge``); ``--merge A/curves.json ...`` adds
the curves earlier runs measured (same seeds) to the table and the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

STEP_REWARD = {"class_path": "lightning_rlhf.toyworld.step_verifier.ArithmeticStepVerifier"}
REWARDS = {"outcome (exact answer)": [],
           "steps (verifier, process_rewards)": ["--model.init_args.algorithm.init_args.process_rewards=true",
                                                 f"--model.init_args.reward={json.dumps(STEP_REWARD)}"]}
ONLINE_PRM = {"class_path": "lightning_rlhf.rewards.OnlineImplicitPRM",
              "init_args": {"outcome": {"class_path": "lightning_rlhf.rewards.FunctionReward",
                                        "init_args": {"function": "lightning_rlhf.rewards.answers.exact_answer"}},
                            "path": "builtin:arithmetic", "beta": 0.05, "learning_rate": 2e-4}}  # as the rlvr table's
REWARDS["online implicit PRM (PRIME)"] = ["--model.init_args.algorithm.init_args.online_process_rewards=true",
                                          f"--model.init_args.reward={json.dumps(ONLINE_PRM)}"]
RUN_NAMES = {"outcome (exact answer)": "outcome", "steps (verifier, process_rewards)": "steps",
             "online implicit PRM (PRIME)": "prm-online"}
COMPLETIONS_PER_ROLLOUT = 128
STEPS_PER_ROLLOUT = 4


def cli(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "lightning_rlhf.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "offline"})
    if done.returncode != 0:
        raise RuntimeError(f"lightning-rlhf {args[0]} failed:\n{done.stderr[-3000:]}")


def fit(run: Path, seed: int, prompts: Path, extra: list[str], every: int) -> list[Path]:
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(run / "checkpoints"), "every_n_train_steps": every, "save_top_k": -1,
                                "filename": "{step}"}}
    cli("fit", "--config", "recipes/grpo/arithmetic.yaml", f"--seed_everything={seed}", f"--data.init_args.path={prompts}",
        f"--trainer.default_root_dir={run}", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_checkpointing=true", f"--trainer.callbacks={json.dumps([checkpoint])}",
        "--model.init_args.export_dir=null", *extra)
    return sorted((run / "checkpoints").glob("step=*.ckpt"), key=lambda p: int(p.stem.split("=")[1]))


def evaluate(checkpoint: Path, seed: int, heldout: Path) -> tuple[float, float]:
    """Held-out accuracy of the checkpoint's policy and of the SFT model, sampled with seed s."""
    export = checkpoint.with_suffix("")
    cli("export", str(checkpoint), str(export))
    report = export / "evaluation.json"
    cli("evaluate", "--policy", str(export), "--reference", "builtin:arithmetic", "--prompts", str(heldout),
        "--reward", "lightning_rlhf.rewards.answers.exact_answer", "--max-new-tokens", "40", "--seed", str(seed),
        "--output", str(report))
    result = json.loads(report.read_text())
    return result["policy"]["mean_reward"], result["reference"]["mean_reward"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--every", type=int, default=15, help="rollouts between checkpoints")
    parser.add_argument("--out", default="runs/rlvr-curves")
    parser.add_argument("--figure", default=None)
    parser.add_argument("--rewards", nargs="*", default=list(REWARDS), choices=list(REWARDS))
    parser.add_argument("--merge", nargs="+", default=[], help="earlier runs' curves.json: their curves join the table and figure")
    args = parser.parse_args()

    from lightning_rlhf.cpu import cpu_capability
    from lightning_rlhf.stats import mean_interval
    from lightning_rlhf.toyworld.arithmetic import write_prompts

    out = Path(args.out)
    prompts = write_prompts(out / "prompts-train.jsonl", 7680, "train", 0)
    heldout = write_prompts(out / "prompts-heldout.jsonl", 500, "heldout", 0)
    curves: dict[str, dict[int, list[float]]] = {name: {} for name in args.rewards}
    for seed in args.seeds:
        for name in args.rewards:
            extra = REWARDS[name]
            run = out / f"seed{seed}" / RUN_NAMES[name]
            print(f"[seed {seed}] {name}: training", flush=True)
            for i, checkpoint in enumerate(fit(run, seed, prompts, extra, args.every * STEPS_PER_ROLLOUT)):
                completions = int(checkpoint.stem.split("=")[1]) // STEPS_PER_ROLLOUT * COMPLETIONS_PER_ROLLOUT
                accuracy, sft = evaluate(checkpoint, seed, heldout)
                if i == 0:  # the SFT model, on the same prompts and sampling seed: nothing sampled yet
                    curves[name].setdefault(0, []).append(sft)
                curves[name].setdefault(completions, []).append(accuracy)
                print(f"[seed {seed}] {name}: {completions} completions -> {accuracy:.3f}", flush=True)
    for path in args.merge:
        earlier = json.loads(Path(path).read_text())
        if earlier["seeds"] != args.seeds:
            raise SystemExit(f"--merge {path}: seeds {earlier['seeds']}, this run's {args.seeds}")
        curves = {**{name: {int(n): v for n, v in points.items()} for name, points in earlier["curves"].items()}, **curves}
    names = list(curves)
    summary = {name: {n: mean_interval(values).as_dict() for n, values in points.items()} for name, points in curves.items()}
    kernels = cpu_capability()
    (out / "curves.json").write_text(json.dumps({"cpu_capability": kernels, "seeds": args.seeds, "curves": curves,
                                                 "summaries": summary, "command": ["python", *sys.argv]}, indent=1))
    lines = ["| sampled completions | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for n in sorted(next(iter(curves.values()))):
        cells = [f"{100 * summary[name][n]['mean']:.1f}% ± {100 * summary[name][n]['half_width']:.1f}%" for name in names]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    print("\n".join(lines) + f"\n\n{len(args.seeds)} seeds, mean ± 95% t-interval; {kernels} kernels")
    if args.figure:
        from lightning_rlhf.plots import Curve, accuracy_vs_n

        drawn = [Curve(name, sorted(summary[name]), [summary[name][n]["mean"] for n in sorted(summary[name])],
                       [summary[name][n]["half_width"] for n in sorted(summary[name])]) for name in names]
        accuracy_vs_n(drawn, args.figure, "GRPO on held-out sums: outcome reward against step rewards",
                      note=f"{len(args.seeds)} seeds, 95% intervals; {kernels} kernels; 500 held-out prompts",
                      xlabel="sampled completions in training", log_x=False)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()

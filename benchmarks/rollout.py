"""PPO rollout speed: generated tokens per second, and the share of the rollout that
generation takes.

One PPO rollout (``plugins/ppo.py``: ``PPO.rollout``) on the benchmark model
(``harness.ModelShape``, 34M parameters, built once): sample a completion for each of
``--prompts`` prompts with the KV cache (``OnlinePolicyModule.generate``, ``--generation-batch``
prompts decoded together, ``--max-new-tokens`` each: the untrained model rarely writes
EOS, so nearly every completion is full length), score them with a rule reward, then
the policy's log-probs and entropy, the reference's log-probs and the critic's values
over the sampled sequences. Each setting runs in its own process (so peak memory is its
own); settings alternate over ``--repeats``; the first rollout of each run is a warm-up.

Run from the repository root::

    python benchmarks/rollout.py
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

SCRIPT = Path(__file__).resolve()


def run(spec: dict) -> dict:
    import torch

    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.modules.online import OnlineSettings
    from lightning_rlhf.modules.online_policy import OnlinePolicyModule
    from lightning_rlhf.registry import create_algorithm
    from lightning_rlhf.rewards import FunctionReward

    torch.manual_seed(spec["seed"])
    module = OnlinePolicyModule(
        ModelSettings(name_or_path=spec["model_dir"]),
        create_algorithm("ppo", max_new_tokens=spec["max_new_tokens"]),
        reward=FunctionReward("lightning_rlhf.rewards.rules.letter_e_reward"),
        online=OnlineSettings(generation_batch_size=spec["generation_batch"]),
    )
    module.configure_model()
    tokenizer = module.tokenizer
    rng = random.Random(spec["seed"])
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if spec["precision"] == "bf16-mixed" else nullcontext()
    timings = []
    for rollout in range(spec["rollouts"] + 1):  # the first is a warm-up
        prompts = [harness._text(rng, rng.randint(*spec["prompt_lengths"])) for _ in range(spec["prompts"])]
        batch = {"prompts": prompts, "prompt_ids": tokenizer(prompts, add_special_tokens=True)["input_ids"]}
        module._generation_seconds, module._generated_tokens = 0.0, 0
        start = time.perf_counter()
        with precision:
            module.algorithm.rollout(module, batch)
        total = time.perf_counter() - start
        if rollout:
            timings.append((module._generated_tokens, module._generation_seconds, total))
    tokens = sum(t for t, _, _ in timings)
    generation = sum(g for _, g, _ in timings)
    total = sum(s for _, _, s in timings)
    return {
        "generated_tokens": tokens,
        "tokens_per_second": round(tokens / generation, 1),
        "rollout_tokens_per_second": round(tokens / total, 1),
        "generation_share": round(generation / total, 3),
        "seconds_per_rollout": round(total / len(timings), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-rollout")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rollouts", type=int, default=2, help="timed rollouts per run, after one warm-up")
    parser.add_argument("--prompts", type=int, default=32, help="prompts per rollout")
    parser.add_argument("--generation-batch", type=int, default=32, help="prompts decoded together")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--prompt-lengths", type=int, nargs=2, default=[8, 64], metavar=("MIN", "MAX"))
    parser.add_argument("--precisions", nargs="+", default=None, choices=["bf16-mixed", "32-true"],
                        help="default: the fast one on this CPU (bf16-mixed only with native bf16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        harness.emit(run(json.loads(Path(args.spec).read_text())))
        return

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    print(f"load average before: {harness.load_average()}")
    counts = harness.build_model(work / "model", harness.ModelShape())
    commands = {}
    precisions = args.precisions or [harness.resolve_precision(None)]
    for precision in precisions:
        spec = {"model_dir": str(work / "model"), "precision": precision, "seed": args.seed, "prompts": args.prompts,
                "generation_batch": args.generation_batch, "max_new_tokens": args.max_new_tokens,
                "prompt_lengths": args.prompt_lengths, "rollouts": args.rollouts}
        path = work / f"spec-{precision}.json"
        path.write_text(json.dumps(spec))
        commands[precision] = [sys.executable, str(SCRIPT), "--worker", "--spec", str(path)]
    print(f"model: {counts['parameters'] / 1e6:.1f}M parameters; {args.prompts} prompts of {args.prompt_lengths} "
          f"tokens, {args.max_new_tokens} new tokens each, {args.generation_batch} decoded together; policy, "
          f"reference and critic (a value model from the same weights)")
    results: dict[str, list[dict]] = {name: [] for name in commands}
    for repeat in range(args.repeats):
        for name, command in commands.items():
            before = harness.load_average()
            result = harness.run_worker(command)
            result["load_before"] = before
            results[name].append(result)
            print(f"  [{repeat + 1}/{args.repeats}] {name:>10}: {result['tokens_per_second']:7.1f} generated tokens/s, "
                  f"generation {100 * result['generation_share']:.0f}% of the rollout, peak "
                  f"{result['peak_rss_mib']:.0f} MiB (load {before})")
    print()
    print("| precision | generated tokens/s | rollout tokens/s (generation, scoring, log-probs, values) | generation share | peak RSS, MiB |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        def med(key):
            return statistics.median(r[key] for r in runs)
        print(f"| {name} | {harness.spread([r['tokens_per_second'] for r in runs])} | "
              f"{med('rollout_tokens_per_second'):.1f} | {med('generation_share'):.2f} | {med('peak_rss_mib'):.0f} |")
    print()
    print(f"machine: {harness.machine()}; load average after: {harness.load_average()}")
    print(f"benchmark: {shlex.join(['python', *sys.argv])}")
    (out / "results.json").write_text(json.dumps({"results": results, "machine": harness.machine(),
                                                  "command": ["python", *sys.argv]}, indent=1))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()

"""``lightning-rlhf label``: sample K completions per prompt from a policy, score them with
a reward source or an LLM judge, and write preference data (``lightning_rlhf.collect``
says what is written)."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

from lightning_rlhf.collect import MODES, preference_rows
from lightning_rlhf.commands.core import add_sampling_arguments, load_policy, read_prompt_rows
from lightning_rlhf.data.readers import write_jsonl


def label_parser() -> argparse.ArgumentParser:
    from lightning_rlhf.rewards.spec import SHORTHANDS

    parser = argparse.ArgumentParser(
        prog="lightning-rlhf label",
        description="Sample K completions per prompt from a policy, score them with a reward source, "
        "and write preference pairs (or rankings) as JSONL.",
    )
    parser.add_argument("--policy", required=True, help="model id, directory, or builtin:<name> (e.g. builtin:toyworld)")
    parser.add_argument("--prompts", required=True, help='rows file with a "prompt" field (JSONL/JSON/Parquet/CSV)')
    annotator = parser.add_mutually_exclusive_group(required=True)
    annotator.add_argument("--reward", help=f"reward source: {SHORTHANDS} (`gold` is the toy world's sentiment scorer)")
    annotator.add_argument("--judge", help="a pairwise LLM judge instead: a model (directory, hub id, builtin:<name>) "
                           "or a .yaml spec of lightning_rlhf.rewards.PairwiseJudge; a pair's margin is 2p - 1")
    parser.add_argument("--output", required=True, help="JSONL file to write")
    parser.add_argument("--k", type=int, default=4, help="completions sampled per prompt (>= 2)")
    parser.add_argument("--mode", choices=MODES, default="best-worst", help="pairs or K-wise rankings")
    parser.add_argument("--pairs-output", default=None,
                        help="with --mode ranking: also write the best-worst pairs of the same scored samples here "
                        "(a reward model on the rankings and DPO on the pairs then see the same labels)")
    parser.add_argument("--min-gap", type=float, default=0.0, help="a pair needs a score difference above this")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    add_sampling_arguments(parser)
    return parser


def label_command(argv: list[str]) -> int:
    from lightning_rlhf.generation import sample
    from lightning_rlhf.rewards.spec import load_reward_source

    parser = label_parser()
    args = parser.parse_args(argv)
    if args.k < 2:
        parser.error("--k must be at least 2: a preference needs two completions")
    if args.pairs_output and args.mode != "ranking":
        parser.error("--pairs-output goes with --mode ranking (the other modes write pairs to --output)")

    started = time.perf_counter()
    prompts, columns = read_prompt_rows(args.prompts, args.limit)
    if args.judge:
        from lightning_rlhf.rewards.judge import load_judge

        judge = load_judge(args.judge)
    else:
        reward = load_reward_source(args.reward)
    model, tokenizer = load_policy(args.policy)
    samples = sample(
        model, tokenizer, prompts, n=args.k, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed, engine=args.engine,
        progress=f"label: {args.k} samples x {len(prompts)} prompts",
    )
    completions = [[s.text for s in group] for group in samples]
    if args.judge:
        scores = judge.group_scores(prompts, completions)
    else:
        flat_scores = reward([p for p, group in zip(prompts, completions) for _ in group], [c for g in completions for c in g],
                             [row for row, group in zip(columns, completions) for _ in group]).tolist()
        scores = [flat_scores[i * args.k : (i + 1) * args.k] for i in range(len(prompts))]
    rows, summary = preference_rows(prompts, completions, scores, args.mode, args.min_gap)
    write_jsonl(args.output, rows)
    if args.pairs_output:
        pairs, pair_summary = preference_rows(prompts, completions, scores, "best-worst", args.min_gap)
        write_jsonl(args.pairs_output, pairs)
        summary.extra["pairs"] = {"output": args.pairs_output, "rows": pair_summary.rows, "mean_margin": pair_summary.mean_margin}
    summary.extra |= {"output": args.output, "mode": args.mode, "k": args.k, "annotator": args.judge or args.reward,
                      "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(asdict(summary)))
    return 0

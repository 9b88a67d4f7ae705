"""``lightning-rlhf evaluate``: a policy against a reference on held-out prompts (what is
measured, and how, is ``lightning_rlhf.evaluate``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lightning_rlhf.commands.core import add_sampling_arguments, load_policy, read_prompt_rows
from lightning_rlhf.evaluate import evaluate_models, format_report, log_to_wandb, report_figure, sample_reference


def evaluate_parser() -> argparse.ArgumentParser:
    from lightning_rlhf.rewards.spec import SHORTHANDS

    parser = argparse.ArgumentParser(
        prog="lightning-rlhf evaluate",
        description="Compare a policy with a reference on held-out prompts: mean reward, win rate, KL, length.",
    )
    parser.add_argument("--policy", required=True, help="model id, directory, or builtin:<name>")
    parser.add_argument("--reference", required=True, help="model to compare against (usually the SFT model)")
    parser.add_argument("--prompts", required=True, help='rows file with a "prompt" field')
    parser.add_argument("--reward", required=True, help=f"reward source: {SHORTHANDS} (`gold` is the toy world's sentiment scorer)")
    parser.add_argument("--samples", type=int, default=1, help="completions per prompt and model")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--output", default=None, help="write the report as JSON here")
    parser.add_argument("--wandb-project", default=None, help="also log to this W&B project (WANDB_MODE=offline respected)")
    parser.add_argument("--wandb-name", default=None, help="W&B run name")
    parser.add_argument("--policy-label", default="policy", help="the policy's name in the table")
    parser.add_argument("--reference-label", default="reference", help="the reference's name in the table")
    parser.add_argument("--best-of-n", default=None, metavar="N,N,...",
                        help="also report best-of-n from the reference for these n (e.g. 2,4,8,16,32)")
    parser.add_argument("--best-of-n-reward", default=None,
                        help="reward source that picks the best of n (default: --reward); a proxy such as a reward model")
    parser.add_argument("--proxy-reward", default=None,
                        help="also report each model's mean score by this reward source: the reward model a policy "
                        "was trained against, beside the evaluation reward, so over-optimisation shows")
    parser.add_argument("--judge", default=None, help="also report the win rate a pairwise LLM judge gives: a model "
                        "(directory, hub id, builtin:<name>) or a .yaml spec of lightning_rlhf.rewards.PairwiseJudge")
    add_sampling_arguments(parser)
    return parser


def evaluate_command(argv: list[str], reference_memo: dict | None = None) -> int:
    """``reference_memo``: a dict kept across calls (a pipeline's) in which the reference's
    samples and scores are kept, so evaluations against the same reference, prompts,
    settings and rewards draw them once."""
    from lightning_rlhf.rewards.spec import load_reward_source

    parser = evaluate_parser()
    args = parser.parse_args(argv)
    best_of_n = []
    if args.best_of_n:
        from lightning_rlhf.best_of_n import parse_ns

        try:
            best_of_n = parse_ns(args.best_of_n)
        except ValueError as e:
            parser.error(f"--best-of-n: {e}")

    started = time.perf_counter()
    prompts, columns = read_prompt_rows(args.prompts, args.limit)
    reward = load_reward_source(args.reward)
    proxy_reward = load_reward_source(args.proxy_reward) if args.proxy_reward else None
    selection_reward = None
    if args.best_of_n_reward:
        selection_reward = proxy_reward if args.best_of_n_reward == args.proxy_reward else load_reward_source(args.best_of_n_reward)
    judge = None
    if args.judge:
        from lightning_rlhf.rewards.judge import load_judge

        judge = load_judge(args.judge)
    policy, policy_tokenizer = load_policy(args.policy)
    reference, reference_tokenizer = load_policy(args.reference)
    settings = dict(n=args.samples, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                    batch_size=args.batch_size, seed=args.seed, engine=args.engine)
    memo_key = json.dumps([args.reference, args.prompts, args.limit, settings, args.reward, args.proxy_reward,
                           best_of_n, args.best_of_n_reward])
    reference_side = None if reference_memo is None else reference_memo.get(memo_key)
    if reference_side is None:
        reference_side = sample_reference(reference, reference_tokenizer, prompts, reward, settings, columns,
                                          proxy_reward, best_of_n, selection_reward)
        if reference_memo is not None:
            reference_memo[memo_key] = reference_side
    report = evaluate_models(
        policy, policy_tokenizer, reference, reference_tokenizer, prompts, reward,
        samples=args.samples, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
        columns=columns, judge=judge, proxy_reward=proxy_reward, reference_side=reference_side, engine=args.engine,
    )
    if best_of_n:
        report["best_of_n"]["selection_reward"] = args.best_of_n_reward or args.reward
    if judge is not None:
        report["judge"]["spec"] = args.judge
    report.update(policy_name=args.policy, reference_name=args.reference, reward=args.reward, proxy_reward=args.proxy_reward,
                  seconds=round(time.perf_counter() - started, 1))
    print(format_report(report, args.policy_label, args.reference_label))
    figure = None
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
        figure = report_figure(report, output.with_suffix(".png"), args.policy_label, args.reference_label)
        print(f"\nwrote {output} and {figure}")
    if args.wandb_project:
        # beside the report, as a training run's log is beside its checkpoints
        log_file = log_to_wandb(report, args.wandb_project, args.wandb_name, vars(args), figure,
                                Path(args.output).parent if args.output else None)
        print(f"W&B run: {log_file}")
    return 0

"""``lightning-rlhf label``: sample K completions per prompt from a policy, score them with
a reward source, and write preference data the data modules read.

The reward source plays the annotator: ``--reward gold`` is the toy world's "human"; a
reward-model directory, or an LLM judge (``--judge``: each completion scored by its mean
probability, read from the judge, of beating the prompt's other completions; see
``rewards.judge``), makes this RLAIF. Three output shapes:

- ``best-worst``: one pair per prompt, the highest-scored completion against the
  lowest, ``{"prompt", "chosen", "rejected", "margin"}`` (``PreferenceDataModule``);
- ``all-pairs``: every pair of completions whose scores differ by more than
  ``min_gap`` (K(K-1)/2 at most), same fields;
- ``ranking``: ``{"prompt", "completions", "scores"}`` (``RankingDataModule``).

``margin`` is the score difference chosen - rejected (> 0). A prompt whose K samples
all score the same carries no preference and is skipped; so is a best-worst prompt
whose spread is not above ``min_gap``. Both are counted in the summary.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

MODES = ("best-worst", "all-pairs", "ranking")


@dataclass
class CollectionSummary:
    prompts: int = 0
    rows: int = 0
    skipped_ties: int = 0
    """prompts whose K samples all scored the same"""
    skipped_small_gap: int = 0
    """prompts with a spread, but none above ``min_gap``"""
    mean_score: float = 0.0
    mean_margin: float = 0.0
    extra: dict = field(default_factory=dict)


def preference_rows(
    prompts: Sequence[str],
    completions: Sequence[Sequence[str]],
    scores: Sequence[Sequence[float]],
    mode: str = "best-worst",
    min_gap: float = 0.0,
) -> tuple[list[dict], CollectionSummary]:
    """Rows of the chosen ``mode`` from K scored completions per prompt (pure: no model).

    Among equal scores the earlier sample is taken as best/worst, so the output does not
    depend on anything but the inputs."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if min_gap < 0:
        raise ValueError(f"min_gap must be >= 0, got {min_gap}")
    rows: list[dict] = []
    summary = CollectionSummary(prompts=len(prompts))
    margins: list[float] = []
    all_scores: list[float] = []
    for prompt, texts, values in zip(prompts, completions, scores, strict=True):
        values = [float(v) for v in values]
        all_scores.extend(values)
        if max(values) == min(values):
            summary.skipped_ties += 1
            continue
        if mode == "ranking":
            rows.append({"prompt": prompt, "completions": list(texts), "scores": values})
            continue
        if mode == "best-worst":
            best = max(range(len(values)), key=lambda i: (values[i], -i))
            worst = min(range(len(values)), key=lambda i: (values[i], i))
            candidates = [(best, worst)] if values[best] - values[worst] > min_gap else []
        else:
            candidates = [
                (i, j) if values[i] > values[j] else (j, i)
                for i, j in itertools.combinations(range(len(values)), 2)
                if abs(values[i] - values[j]) > min_gap
            ]
        if not candidates:
            summary.skipped_small_gap += 1
        for chosen, rejected in candidates:
            margin = values[chosen] - values[rejected]
            margins.append(margin)
            rows.append({"prompt": prompt, "chosen": texts[chosen], "rejected": texts[rejected], "margin": margin})
    summary.rows = len(rows)
    summary.mean_score = sum(all_scores) / len(all_scores) if all_scores else 0.0
    summary.mean_margin = sum(margins) / len(margins) if margins else 0.0
    return rows, summary


def read_prompt_rows(path: str, limit: int | None = None) -> tuple[list[str], list[dict]]:
    """The ``prompt`` strings of a rows file and each row's other columns (a reference
    ``answer``, ...), for reward sources that read them; a bad row raises a DataError
    naming file, row, field."""
    from lightning_rlhf.data.errors import DataError
    from lightning_rlhf.data.formats import RowChecker
    from lightning_rlhf.data.readers import read_rows

    prompts, columns = [], []
    for row, record in read_rows(path):
        checker = RowChecker(path, row, record)
        prompt = checker.text("prompt")
        if not isinstance(prompt, str):
            raise checker.error("prompt", "sampling takes plain-text prompts, got a message list")
        prompts.append(prompt)
        columns.append({key: value for key, value in record.items() if key != "prompt"})
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        raise DataError(path, None, None, "no rows")
    return prompts, columns


def load_policy(name_or_path: str):
    """(model, tokenizer), frozen in eval mode; ``builtin:`` names are built on first use."""
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.models.loading import load_causal_lm, load_tokenizer

    settings = ModelSettings(name_or_path=name_or_path)
    return load_causal_lm(settings, trainable=False), load_tokenizer(settings)


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")
    return path


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="longest completion in tokens")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per generate call")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--engine", choices=["hf", "decode"], default="hf",
                        help="what samples: hf (transformers' generate) or decode (one prefill per prompt for its "
                        "samples, finished rows dropped: faster with several samples per prompt; the same "
                        "distribution, other draws for a seed)")


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

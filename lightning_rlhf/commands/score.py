"""``lightning-rlhf score``: score a file of (prompt, completion) rows with any reward source."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from lightning_rlhf.rewards.scoring import read_scoring_rows
from lightning_rlhf.rewards.spec import SHORTHANDS, load_reward_source


def score_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lightning-rlhf score",
        description="Score {prompt, completion} rows with a reward source; write each row back with its score.",
    )
    parser.add_argument("--reward", required=True, help=f"the reward source: {SHORTHANDS}")
    parser.add_argument("--input", required=True, help="JSONL/JSON/Parquet/CSV rows with 'prompt' and 'completion'")
    parser.add_argument("--output", required=True, help="JSONL file to write")
    parser.add_argument("--field", default="reward", help="name of the score field written (default: reward)")
    parser.add_argument("--chunk-size", type=int, default=256, help="rows handed to the source at a time")
    args = parser.parse_args(argv)
    if args.chunk_size <= 0:
        parser.error("--chunk-size must be positive")

    rows = read_scoring_rows(args.input)
    source = load_reward_source(args.reward)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    total, total_squares = 0.0, 0.0
    with open(output, "w", encoding="utf-8") as f:
        for start in range(0, len(rows), args.chunk_size):
            chunk = rows[start : start + args.chunk_size]
            scores = source([p for _, p, _ in chunk], [c for _, _, c in chunk]).tolist()
            for (record, _, _), value in zip(chunk, scores, strict=True):
                f.write(json.dumps({**record, args.field: value}, ensure_ascii=False) + "\n")
                total, total_squares = total + value, total_squares + value * value
    n = len(rows)
    mean = total / n
    std = math.sqrt(max(total_squares / n - mean * mean, 0.0))
    print(f"scored {n} rows from {args.input} -> {output}: mean {mean:.4f}, std {std:.4f}")
    return 0

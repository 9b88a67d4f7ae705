"""The prompt once per group (``online.share_prompt``) against a row per sample: the loss's
forward and backward over one GRPO step's samples, cut into micro-batches as the trainer
cuts them, on completions the model samples itself.

The checkable world's SFT model (``builtin:arithmetic``) samples ``--group`` completions of
each of ``--groups`` training prompts (``DecodeEngine``, temperature 1, up to
``--max-new-tokens``); the step's rows are then scored through the policy module's
log-prob path (a weighted sum of the log-probs, forward and backward) in micro-batches of
``--micro-batch-size`` rows, three ways: ``rows`` (micro-batches in rollout order),
``by-length`` (``online.group_by_length``: rows sorted by length first, so little padding)
and ``share-prompt`` (``online.share_prompt``: micro-batches of whole groups, each prompt
run once with a KV cache its samples continue from, packed to their real tokens where the
model allows). The ways alternate within one
process, ``--repeats`` times after a warm-up; medians and ranges are printed, with the
tokens each way computes, padding included. ``--preamble-copies`` lengthens the prompts.

Run from the repository root::

    python benchmarks/share_prompt.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:arithmetic")
    parser.add_argument("--groups", type=int, default=16, help="prompts in the step")
    parser.add_argument("--group", type=int, default=8, help="samples per prompt (G)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--micro-batch-size", type=int, default=32)
    parser.add_argument("--preamble-copies", type=int, default=0,
                        help="put this many copies of a sentence before each prompt: longer prompts, as a real "
                        "task's instructions make them (the model samples from them all the same)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args()

    import torch

    from lightning_rlhf import create_algorithm
    from lightning_rlhf.cpu import cpu_capability
    from lightning_rlhf.data import shared_prompt
    from lightning_rlhf.decode_engine import DecodeEngine
    from lightning_rlhf.engine import SamplingSettings
    from lightning_rlhf.models.config import ModelSettings
    from lightning_rlhf.modules.online import split_micro_batches, with_group_layout
    from lightning_rlhf.modules.policy import PolicyModule
    from lightning_rlhf.packed_attention import packs_completions
    from lightning_rlhf.rollout import generate_rollout
    from lightning_rlhf.toyworld.arithmetic import problems

    torch.manual_seed(args.seed)
    module = PolicyModule(ModelSettings(args.model, dtype="float32"), create_algorithm("sft"))
    module.configure_model()
    preamble = "Add the terms one at a time. " * args.preamble_copies
    prompt_ids = [module.tokenizer(preamble + problem.prompt)["input_ids"] for problem in problems(args.groups, "train", args.seed)]
    engine = DecodeEngine(module.policy, module.tokenizer, batch_size=args.groups * args.group)
    rollout = generate_rollout(engine, module.tokenizer, prompt_ids, SamplingSettings(max_new_tokens=args.max_new_tokens),
                               torch.device("cpu"), n=args.group)
    rows = {**rollout.batch, "loss_tokens": torch.tensor(1.0), "loss_rows": torch.tensor(1.0)}
    ways = {
        "rows": [piece for piece in split_micro_batches(rows, args.micro_batch_size)],
        "by-length": [piece for piece in split_micro_batches(rows, args.micro_batch_size, by_length=True)],
        "share-prompt": [with_group_layout(piece) for piece in split_micro_batches(rows, args.micro_batch_size)],
    }
    prefix = shared_prompt.GROUP
    # the completions' real tokens only, where they run packed (lightning_rlhf.packed_attention)
    completions = prefix + ("tokens" if packs_completions(module.policy.config) else "completion_ids")
    tokens = {name: sum(piece[prefix + "prompt_ids"].numel() + piece[completions].numel()
                        if prefix + "index" in piece else piece["input_ids"].numel() for piece in pieces)
              for name, pieces in ways.items()}
    module.policy.train()

    def step(pieces) -> float:
        start = time.perf_counter()
        for piece in pieces:
            logps = module.policy_logps(piece)
            (logps.token_logps * logps.mask).sum().backward()
        module.policy.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    seconds = {name: [] for name in ways}
    for repeat in range(args.repeats + 1):
        for name, pieces in ways.items():
            elapsed = step(pieces)
            if repeat:  # the first of each is a warm-up
                seconds[name].append(elapsed)
    result = {
        "command": ["python", *sys.argv], "machine": harness.machine(), "kernels": cpu_capability(),
        "load_average": harness.load_average(),
        "prompt_tokens": [len(ids) for ids in prompt_ids], "completion_tokens": rollout.lengths.tolist(),
        "tokens": tokens, "milliseconds": {name: [round(s * 1000, 2) for s in values] for name, values in seconds.items()},
    }
    print(f"{args.groups} groups of {args.group} from {args.model}: prompts of {min(result['prompt_tokens'])}-"
          f"{max(result['prompt_tokens'])} tokens, completions of {min(result['completion_tokens'])}-"
          f"{max(result['completion_tokens'])}; micro-batches of {args.micro_batch_size} rows, forward + backward, "
          f"median (range) of {args.repeats}:")
    for name, values in seconds.items():
        ms = [s * 1000 for s in values]
        print(f"  {name:>12}: {statistics.median(ms):6.1f} ms ({min(ms):.1f}-{max(ms):.1f}), {tokens[name]} tokens")
    for other in ("rows", "by-length"):
        ratio = statistics.median(seconds["share-prompt"]) / statistics.median(seconds[other])
        print(f"  share-prompt / {other}: {ratio:.2f}x")
    print(f"  kernels {result['kernels']}; load average {result['load_average']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

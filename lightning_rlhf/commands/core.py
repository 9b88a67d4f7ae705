"""What several commands share: sampling arguments, reading prompts, loading a policy to
sample from, printing a table."""

from __future__ import annotations

import argparse


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


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="longest completion in tokens")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per generate call")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    from lightning_rlhf.generation import ENGINES

    parser.add_argument("--engine", choices=list(ENGINES), default="hf",
                        help="what samples: hf (transformers' generate) or decode (one prefill per prompt for its "
                        "samples, finished rows dropped: faster with several samples per prompt; the same "
                        "distribution, other draws for a seed)")


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())

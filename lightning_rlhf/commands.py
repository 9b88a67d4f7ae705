"""The commands that are not training runs: listing, exporting."""

from __future__ import annotations

import argparse
from pathlib import Path


def list_plugins(argv: list[str]) -> int:
    """Print every registered algorithm: name, stage, data kind, capabilities, summary."""
    argparse.ArgumentParser(prog="lightning-rlhf list-plugins", description=list_plugins.__doc__).parse_args(argv)
    from lightning_rlhf.registry import list_algorithms

    rows = [
        (name, cls.stage, cls.data, ",".join(cls.capabilities()) or "-", cls.summary())
        for name, cls in list_algorithms().items()
    ]
    _print_table(("name", "stage", "data", "needs", "summary"), rows)
    return 0


def list_recipes(argv: list[str]) -> int:
    """Print every recipe under a folder with its one-line description (first comment line)."""
    parser = argparse.ArgumentParser(prog="lightning-rlhf list-recipes", description=list_recipes.__doc__)
    parser.add_argument("--dir", default="recipes", help="folder to search (default: ./recipes)")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    if not root.is_dir():
        parser.error(f"no recipe folder at {root}; run from the repository root or pass --dir")
    rows = [(str(path), recipe_summary(path)) for path in sorted(root.rglob("*.yaml"))]
    _print_table(("recipe", "what it does"), rows)
    return 0


def recipe_summary(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def export(argv: list[str]) -> int:
    """Write a trained policy or reward model from a Lightning checkpoint in Hugging Face format."""
    parser = argparse.ArgumentParser(prog="lightning-rlhf export", description=export.__doc__)
    parser.add_argument("checkpoint", help="a .ckpt file written by `lightning-rlhf fit`")
    parser.add_argument("output", help="directory to write (loadable with from_pretrained)")
    parser.add_argument("--adapter-only", action="store_true", help="save the LoRA adapter alone, not merged weights")
    args = parser.parse_args(argv)
    from lightning_rlhf.modules.reward_module import checkpoint_module_class

    # Only what is written is loaded: a policy without its reference, critic or reward model.
    module = checkpoint_module_class(args.checkpoint).policy_from_checkpoint(args.checkpoint)
    module.save_pretrained(args.output, merged=not args.adapter_only)
    print(f"wrote {args.output}")
    return 0


def score(argv: list[str]) -> int:
    """Score a file of {prompt, completion} rows with any reward source."""
    from lightning_rlhf.rewards.scoring import score_command

    return score_command(argv)


def serve_reward(argv: list[str]) -> int:
    """Serve one reward source over HTTP (POST /score, GET /health), for RemoteReward."""
    from lightning_rlhf.rewards.serve import serve_command

    return serve_command(argv)


def label(argv: list[str]) -> int:
    """Sample K completions per prompt, score them with a reward source, write preference pairs."""
    from lightning_rlhf.collect import label_command

    return label_command(argv)


def evaluate(argv: list[str]) -> int:
    """Compare a policy with a reference on held-out prompts: reward, win rate, KL, length."""
    from lightning_rlhf.evaluate import evaluate_command

    return evaluate_command(argv)


def pipeline(argv: list[str]) -> int:
    """Run the stages of a pipeline YAML (build, prompts, label, fit, evaluate) one after another."""
    from lightning_rlhf.pipeline import pipeline_command

    return pipeline_command(argv)


def plot(argv: list[str]) -> int:
    from lightning_rlhf.plot_runs import plot_command

    return plot_command(argv)


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


COMMANDS = {
    "list-plugins": list_plugins,
    "list-recipes": list_recipes,
    "export": export,
    "score": score,
    "serve-reward": serve_reward,
    "label": label,
    "evaluate": evaluate,
    "pipeline": pipeline,
    "plot": plot,
}

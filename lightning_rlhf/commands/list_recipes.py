"""``lightning-rlhf list-recipes``: the recipes under a folder, each with its first comment line."""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_rlhf.commands.core import print_table


def list_recipes(argv: list[str]) -> int:
    """Print every recipe under a folder with its one-line description (first comment line)."""
    parser = argparse.ArgumentParser(prog="lightning-rlhf list-recipes", description=list_recipes.__doc__)
    parser.add_argument("--dir", default="recipes", help="folder to search (default: ./recipes)")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    if not root.is_dir():
        parser.error(f"no recipe folder at {root}; run from the repository root or pass --dir")
    rows = [(str(path), recipe_summary(path)) for path in sorted(root.rglob("*.yaml"))]
    print_table(("recipe", "what it does"), rows)
    return 0


def recipe_summary(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""

"""``lightning-rlhf list-plugins``: every registered algorithm."""

from __future__ import annotations

import argparse

from lightning_rlhf.commands.core import print_table


def list_plugins(argv: list[str]) -> int:
    """Print every registered algorithm: name, stage, data kind, capabilities, summary."""
    argparse.ArgumentParser(prog="lightning-rlhf list-plugins", description=list_plugins.__doc__).parse_args(argv)
    from lightning_rlhf.registry import list_algorithms

    rows = [
        (name, cls.stage, cls.data, ",".join(cls.capabilities()) or "-", cls.summary())
        for name, cls in list_algorithms().items()
    ]
    print_table(("name", "stage", "data", "needs", "summary"), rows)
    return 0

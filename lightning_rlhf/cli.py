"""The ``lightning-rlhf`` command.

Training commands (fit, validate, test, predict) are Lightning's CLI driven by a recipe
(``lightning_rlhf.training_cli``); the others (list-plugins, list-recipes, export, ...) are
small commands of their own, a module each (``lightning_rlhf.commands``). This module only
dispatches, and prints the user's errors as one line.
"""

from __future__ import annotations

import os
import sys
import warnings

from lightning_rlhf import registry
from lightning_rlhf.callbacks.divergence import DivergenceError
from lightning_rlhf.commands import COMMANDS, command
from lightning_rlhf.data.errors import DataError
from lightning_rlhf.rewards.remote import RewardServerUnavailable
from lightning_rlhf.training_cli import RLHFCLI, one_line

# Errors with a message meant for the user: printed as one line by main().
USER_ERRORS = (DataError, FileNotFoundError, registry.UnknownAlgorithmError, ValueError, DivergenceError,
               RewardServerUnavailable)
# A run that stopped on its own (a divergence, a reward server down) exits 1; a usage error 2.
RUN_STOPPED = (DivergenceError, RewardServerUnavailable)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LIGHTNING_RLHF_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    from jsonargparse import ArgumentError

    try:
        return _run(argv)
    except (*USER_ERRORS, ArgumentError) as e:
        # Bad recipes, data and paths are the user's to fix: one line, no traceback
        # (--debug or LIGHTNING_RLHF_DEBUG=1 shows it).
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1 if isinstance(e, RUN_STOPPED) else 2


def _run(argv: list[str]) -> int:
    # main() (and the pipeline's fit stages) hand LightningCLI arguments that are not
    # sys.argv on purpose.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    if argv and argv[0] in COMMANDS:
        return command(argv[0])(argv[1:]) or 0
    if argv and argv[0] in ("-h", "--help"):
        print("usage: lightning-rlhf {fit,validate,test,predict} --config RECIPE.yaml [overrides] [--debug]")
        print("       lightning-rlhf {" + ",".join(COMMANDS) + "} [...]\n")
        print("Training commands take a recipe (see `lightning-rlhf list-recipes`);")
        print("`lightning-rlhf fit --help` lists every recipe key.")
        return 0
    RLHFCLI(args=argv, exit_on_error=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The commands of ``lightning-rlhf`` that are not training runs, a module each.

Each module holds its command's arguments and the call into the library, which stays
importable without them (``lightning_rlhf.evaluate``'s arithmetic, ``collect.preference_rows``,
``rewards.serve.RewardServer``, ...); ``core`` holds what several commands share. A command's
module is imported when that command runs, so a light command does not pay for a heavy one's
imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

# command -> "module:function" under lightning_rlhf.commands; the function takes the
# command's arguments and returns its exit status
COMMANDS = {
    "list-plugins": "list_plugins:list_plugins",
    "list-recipes": "list_recipes:list_recipes",
    "export": "export:export",
    "score": "score:score_command",
    "serve-reward": "serve_reward:serve_command",
    "label": "label:label_command",
    "evaluate": "evaluate:evaluate_command",
    "pipeline": "pipeline:pipeline",
    "plot": "plot:plot",
}


def command(name: str) -> Callable[[list[str]], int]:
    """The function of the command ``name`` (a key of ``COMMANDS``)."""
    module, function = COMMANDS[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)

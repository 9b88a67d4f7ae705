"""Data paths in a recipe, found from wherever the command runs.

A recipe's relative data path (``path: recipes/data/tiny_preferences.jsonl``) is read from
the working directory first, as any command-line path is. When nothing is there, it is
looked for against the folders the recipe sits in and above it (the shipped recipes name
their data from the repository's root, two folders up), so
``lightning-rlhf fit --config ~/lightning-rlhf/recipes/dpo/tiny.yaml`` runs from any folder.
When it is found nowhere, the error names every place it looked.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

DATA_PATH_KEYS = ("path", "val_path")


def looks_like_a_file(value: str) -> bool:
    """A local file or folder rather than a hub dataset id (``org/name``), as the readers tell them apart."""
    return value.startswith((".", "/", "~")) or value.count("/") > 1 or bool(Path(value).suffix)


def resolve_data_paths(config, recipe_files: list[str]) -> None:
    """Rewrite, in the parsed ``config`` (its ``data.init_args``), each relative data path
    that does not exist from the working directory but does beside one of ``recipe_files``
    (or a folder above one) to that absolute path. A path found nowhere is an error that
    names where it was looked for."""
    data = config.get("data") if hasattr(config, "get") else None
    init_args = data.get("init_args") if data is not None and hasattr(data, "get") else None
    if init_args is None or not recipe_files:
        return
    for key in DATA_PATH_KEYS:
        value = init_args.get(key)
        if not isinstance(value, str) or not looks_like_a_file(value):
            continue
        path = Path(os.path.expanduser(value))
        if path.is_absolute() or path.exists():
            continue
        places = candidate_folders(recipe_files)
        found = next((folder / path for folder in places if (folder / path).exists()), None)
        if found is None:
            looked = ", ".join(str(folder) for folder in [Path.cwd(), *places])
            raise FileNotFoundError(f"data.{key}: data file {value!r} does not exist; looked in the working directory and "
                                    f"beside the recipe: {looked}")
        log.info("data.%s: %r found at %s (relative to the recipe, not the working directory)", key, value, found)
        init_args[key] = str(found)


def candidate_folders(recipe_files: list[str]) -> list[Path]:
    """The recipes' folders and the folders above them, nearest first, without repeats."""
    folders: list[Path] = []
    for recipe in recipe_files:
        folder = Path(recipe).expanduser().resolve().parent
        for candidate in (folder, *folder.parents):
            if candidate not in folders and candidate != Path.cwd():
                folders.append(candidate)
    return folders

"""Tracking runs in W&B: the metric names every module logs, and a reader for offline runs.

Metric names. A metric that means the same thing has the same name whatever the plugin,
so runs of different objectives sit on one chart (TRL's names: ``rewards/chosen``,
``logps/chosen``, ``objective/kl``; :func:`lightning_rlhf.ops.preference_metrics` writes the
pairwise ones). The module prefixes ``train/`` or ``val/``; the plugin returns the rest.

Offline runs. ``WANDB_MODE=offline`` (or ``offline: true`` on the logger) writes the run
to ``<save_dir>/wandb/offline-run-*/run-<id>.wandb``, uploaded later with ``wandb sync``.
That file is a LevelDB-style record log of ``wandb_internal_pb2.Record`` protobufs; the
Python reader wandb used to ship (``wandb.sdk.internal.datastore``) is gone from recent
releases, so :func:`read_offline_run` reads it here, for tests and for checking what a
run on an air-gapped machine recorded before syncing it.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

_BLOCK = 32768
_HEADER = struct.Struct("<4sHB")  # ":W&B", magic 0xBEE1, version
_RECORD = struct.Struct("<IHB")  # crc32, length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: str | Path):
    """Every ``wandb_internal_pb2.Record`` of a ``run-*.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, version = _HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B run log (header {ident!r}, magic {magic:#x})")
    offset, pending = _HEADER.size, b""
    while offset + _RECORD.size <= len(data):
        room = _BLOCK - offset % _BLOCK
        if room < _RECORD.size:  # a block's tail too short for a header is zero padding
            offset += room
            continue
        crc, length, kind = _RECORD.unpack_from(data, offset)
        if length == 0 and kind == 0:  # unwritten space at the end
            break
        payload = data[offset + _RECORD.size : offset + _RECORD.size + length]
        offset += _RECORD.size + length
        pending = payload if kind in (_FULL, _FIRST) else pending + payload
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


@dataclass
class OfflineRun:
    """What an offline run recorded: its config, logged rows and names."""

    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    artifacts: list[dict] = field(default_factory=list)
    """each logged artifact: name, type, aliases, files (paths inside it), metadata"""

    def keys(self) -> set[str]:
        return {k for row in self.history for k in row}


def read_offline_run(path: str | Path, timeout: float = 60.0) -> OfflineRun:
    """Config, history rows, name, group, tags and artifacts of a ``run-*.wandb`` file.

    W&B's service process writes the file; ``run.finish()`` can return before it has
    written the last records (seen on a loaded machine), or created the file at all, so
    this waits, up to ``timeout`` seconds, for the file and for the run's exit record,
    which is written last.
    """
    deadline = time.monotonic() + timeout
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # the service may create the file after ``finish()`` returns, too
    while True:
        records = list(read_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} has no exit record after {timeout:.0f} s: the run has not finished writing")
        time.sleep(0.2)
    run = OfflineRun()
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            # a run may be recorded more than once (updates); keep what each one sets
            run.name = record.run.display_name or run.name
            run.group = record.run.run_group or run.group
            run.tags = list(record.run.tags) or run.tags
            _update_config(run.config, record.run.config)
        elif kind == "config":
            _update_config(run.config, record.config)
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                _set_nested(row, [item.key] if item.key else list(item.nested_key), json.loads(item.value_json))
            run.history.append(row)
        elif kind == "artifact":
            artifact = record.artifact
            run.artifacts.append({
                "name": artifact.name,
                "type": artifact.type,
                "aliases": list(artifact.aliases),
                "files": [entry.path for entry in artifact.manifest.contents],
                "metadata": json.loads(artifact.metadata) if artifact.metadata else {},
            })
    return run


def _set_nested(row: dict, keys: list[str], value) -> None:
    # A media value (a table) arrives as several items: ("samples", "path"), ("samples", "_type")...
    for key in keys[:-1]:
        row = row.setdefault(key, {})
    row[keys[-1]] = value


def _update_config(config: dict, record) -> None:
    for item in record.update:
        key = item.key or "/".join(item.nested_key)
        value = json.loads(item.value_json)
        # W&B wraps each top-level config value as {"value": ..., "desc": ...}
        config[key] = value["value"] if isinstance(value, dict) and "value" in value else value

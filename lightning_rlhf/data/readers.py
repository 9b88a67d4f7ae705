"""Read rows from JSONL, JSON, Parquet, CSV, a ``datasets`` dataset saved to disk, or a
hub dataset id. Every row comes with its 1-based row number for error messages."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lightning_rlhf.data.errors import DataError

Row = tuple[int, dict]


def read_rows(path: str | os.PathLike, split: str = "train") -> Iterator[Row]:
    source = str(path)
    local = Path(os.path.expanduser(source))
    if local.is_dir():
        yield from _read_saved_dataset(local, split)
        return
    if not local.exists():
        if source.startswith((".", "/", "~")) or source.count("/") > 1 or local.suffix:
            where = "" if Path(os.path.expanduser(source)).is_absolute() else f" (relative paths are read from the working directory, {os.getcwd()})"
            raise FileNotFoundError(f"data file {source!r} does not exist{where}")
        yield from _read_hub_dataset(source, split)
        return
    suffix = local.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}
    if suffix not in readers:
        raise DataError(source, None, None, f"unknown file type {suffix!r}; expected one of {sorted(readers)}")
    yield from readers[suffix](local)


def _read_jsonl(path: Path) -> Iterator[Row]:
    with open(path, "rb") as f:
        for row, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(str(path), row, None, f"invalid UTF-8 at byte {e.start} of the line") from None
            if not line.strip():
                continue
            try:
                # Without its newline, a row cut off mid-object is reported at the column where
                # it ends, not at "column 1" of the next line.
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise DataError(str(path), row, None, f"malformed JSON: {e.msg} at column {e.colno}") from None
            if not isinstance(record, dict):
                raise DataError(str(path), row, None, f"expected a JSON object, got {type(record).__name__}")
            yield row, record


def _read_json(path: Path) -> Iterator[Row]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(str(path), None, None, f"invalid UTF-8 at byte {e.start}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(str(path), None, None, f"malformed JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(str(path), None, None, "expected a list of objects (or {\"data\": [...]})")
    for row, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise DataError(str(path), row, None, f"expected a JSON object, got {type(record).__name__}")
        yield row, record


def _read_parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for row, record in enumerate(table.to_pylist(), start=1):
        yield row, record


def _read_csv(path: Path) -> Iterator[Row]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            # Row 1 is the header, so data rows are numbered as a spreadsheet shows them.
            for row, record in enumerate(csv.DictReader(f), start=2):
                if None in record:
                    raise DataError(str(path), row, None, "more values than header columns")
                yield row, {key: _csv_value(value) for key, value in record.items()}
    except UnicodeDecodeError as e:
        raise DataError(str(path), None, None, f"invalid UTF-8 at byte {e.start}") from None


def _csv_value(value: str | None):
    # CSV has only strings; numeric fields (margin, rating, label) are parsed where they
    # are used, and a JSON list in a cell (a conversation) is decoded here.
    if value is not None and value.startswith("[") and value.endswith("]"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _read_saved_dataset(path: Path, split: str) -> Iterator[Row]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(str(path), None, None, f"no split {split!r}; splits are {sorted(loaded)}")
        loaded = loaded[split]
    for row, record in enumerate(loaded, start=1):
        yield row, record


def _read_hub_dataset(name: str, split: str) -> Iterator[Row]:
    import datasets

    for row, record in enumerate(datasets.load_dataset(name, split=split), start=1):
        yield row, record


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Rows as JSON lines (the layout :func:`read_rows` reads first), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")
    return path

"""The rows ``lightning-rlhf score`` reads (the command is ``commands.score``)."""

from __future__ import annotations


def read_scoring_rows(path: str) -> list[tuple[dict, str, str]]:
    """``(row, prompt, completion)`` for every row; a bad row is a ``DataError`` naming the
    file, the row and the field."""
    from lightning_rlhf.data.formats import RowChecker
    from lightning_rlhf.data.readers import read_rows

    rows = []
    for row, record in read_rows(path):
        checker = RowChecker(path, row, record)
        texts = []
        for field in ("prompt", "completion"):
            value = checker.text(field)
            if not isinstance(value, str):
                raise checker.error(field, "reward sources score text: expected a string, got a message list")
            texts.append(value)
        rows.append((record, *texts))
    if not rows:
        from lightning_rlhf.data.errors import DataError

        raise DataError(path, None, None, "no rows")
    return rows

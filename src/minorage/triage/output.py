"""Rows out: `jsonl` (one object a line, for pipes), `csv` (fixed columns) or `json` (one list).

JSON keeps every value exact (control characters escaped by JSON itself). CSV is what a
spreadsheet opens, so its cells are made harmless there: a cell that starts like a formula
(`=`, `+`, `-`, `@`, tab, carriage return) gets a leading `'`, and control characters (terminal
escape sequences in a hostile file name) are written as `\\xNN`. Files are written whole or not
at all: a run that fails leaves an earlier output as it was.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

from minorage.evidence.paths import printable

FORMATS = ("jsonl", "csv", "json")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _clean(value):
    """JSON-safe values: no NaN, floats rounded to what ages need."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 3)
    return value


def spreadsheet_safe(value):
    """A CSV cell that a spreadsheet shows as text: no formula, no control character."""
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    if not isinstance(value, str):
        return value
    value = printable(value)
    return "'" + value if value.startswith(_FORMULA_START) else value


class ReaderLeft(Exception):
    """The rows' reader closed its end of the pipe (`minorage predict ... | head`)."""


@contextmanager
def to_reader() -> Iterator[None]:
    """Writes to the output stream: a broken pipe there is the reader leaving, told apart from
    one raised while the rows are made (a worker's pipe, which is an error)."""
    try:
        yield
    except BrokenPipeError as exc:
        raise ReaderLeft(str(exc)) from exc


def write_rows(rows: Iterable[dict], fmt: str, stream: TextIO, columns: Sequence[str]) -> int:
    """Write rows as they come (jsonl, csv) or at the end (json); returns how many."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    count = 0
    collected = []
    writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore") if fmt == "csv" else None
    if writer:
        with to_reader():
            writer.writeheader()
    for row in rows:
        row = {k: _clean(v) for k, v in row.items()}
        count += 1
        with to_reader():
            if fmt == "jsonl":
                stream.write(json.dumps(row) + "\n")
            elif writer:
                writer.writerow({k: ("" if row.get(k) is None else spreadsheet_safe(row[k])) for k in columns})
            else:
                collected.append(row)
            stream.flush()
    if fmt == "json":
        with to_reader():
            json.dump(collected, stream, indent=2)
            stream.write("\n")
    return count


@contextmanager
def output_stream(path: str | os.PathLike | None) -> Iterator[TextIO]:
    """Standard output (None or "-"), or a file written beside its target and moved over it
    only when everything was written; a target that is not a regular file (a pipe, /dev/full)
    is written directly."""
    if path is None or str(path) == "-":
        yield sys.stdout
        return
    if os.path.exists(path) and not os.path.isfile(path):
        with open(path, "w", newline="", encoding="utf-8") as stream:
            yield stream
        return
    folder, name = os.path.split(os.path.abspath(path))
    fd, partial = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o666 & ~umask)  # as an ordinary new file would be
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as stream:
            yield stream
        os.replace(partial, path)
    except BaseException:
        os.unlink(partial)
        raise

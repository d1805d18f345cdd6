"""Rows out: `jsonl` (one object a line, for pipes), `csv` (fixed columns) or `json` (one list)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from typing import TextIO

FORMATS = ("jsonl", "csv", "json")


def _clean(value):
    """JSON-safe values: no NaN, floats rounded to what ages need."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 3)
    return value


def write_rows(rows: Iterable[dict], fmt: str, stream: TextIO, columns: Sequence[str]) -> int:
    """Write rows as they come (jsonl, csv) or at the end (json); returns how many."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    count = 0
    collected = []
    writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore") if fmt == "csv" else None
    if writer:
        writer.writeheader()
    for row in rows:
        row = {k: _clean(v) for k, v in row.items()}
        count += 1
        if fmt == "jsonl":
            stream.write(json.dumps(row) + "\n")
        elif writer:
            writer.writerow({k: ("" if row.get(k) is None else _csv_value(row[k])) for k in columns})
        else:
            collected.append(row)
        stream.flush()
    if fmt == "json":
        json.dump(collected, stream, indent=2)
        stream.write("\n")
    return count


def _csv_value(value):
    return json.dumps(value) if isinstance(value, (list, dict)) else value

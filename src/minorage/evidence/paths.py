"""Paths of evidence as the tool shows and opens them; light enough for every command to import.

- `display_path`: a path as text, exact where it is UTF-8 (the exact bytes are `os.fsencode`);
- `printable`: text that cannot act on a terminal (escape sequences, bidi overrides);
- `inside`: whether a real path lies in one of the sources;
- `open_no_atime`: opening without changing the access time, where the system allows it.
"""

from __future__ import annotations

import errno
import os
import unicodedata
from collections.abc import Iterable

O_NOATIME = getattr(os, "O_NOATIME", 0)


def display_path(path: str | os.PathLike) -> str:
    """A path as text: bytes that are not UTF-8 shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def printable(text: str) -> str:
    """Text safe on a terminal: control and format characters shown as \\xNN / \\uNNNN
    instead of acting."""
    return "".join(
        (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") if unicodedata.category(c) in ("Cc", "Cf") else c
        for c in text
    )


def inside(path: str, roots: Iterable[str]) -> str | None:
    """The root that `path` (real, absolute) lies in or is, if any."""
    for root in roots:
        if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
            return root
    return None


def open_no_atime(path: str | os.PathLike, flags: int) -> tuple[int, bool]:
    """`os.open` with `O_NOATIME` where the system grants it (the owner, or root); else without
    it. Returns (fd, whether the access time is kept)."""
    if O_NOATIME:
        try:
            return os.open(path, flags | O_NOATIME), True
        except PermissionError as exc:
            if exc.errno != errno.EPERM:  # EACCES: not readable at all
                raise
    return os.open(path, flags), False

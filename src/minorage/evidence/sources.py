"""Walking the evidence: every file, folder and link under the sources, each with what to do
with it, nothing silently left out and nothing outside the sources read unless asked.

- A source named through a symbolic link is walked at its real place, and every entry is named
  by its real folder plus its own name, so the same evidence reached by two spellings is one.
- A symbolic link is an entry of its own, with its target: a target inside a source is read
  under its own name there (status `link`); one outside is not read (`link_not_followed`)
  unless `follow_links`, when it is walked or read like a source; a dangling link or a loop is
  `link_broken`. Folders are never entered through a link twice (no loops).
- A folder that cannot be listed is an entry with status `unreadable`; each listed folder an
  entry with status `folder`.
- Folders are opened with `O_NOATIME` where the system allows it, like files (`io`).

The walk streams: nothing is held per file, so a walk of millions costs no memory.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from minorage.evidence.paths import display_path, inside, open_no_atime

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

#: Statuses the walk gives itself; files it hands on (status None) are read by the caller.
WALK_STATUSES = ("folder", "link", "link_not_followed", "link_broken", "unreadable", "missing")


@dataclass(frozen=True)
class Entry:
    """One thing found under the sources.

    `path` is absolute, real up to its last component (the key of a case); `relative` is its
    path below the source that named it; `kind` is file, folder or link; `status` is None for a
    file still to be read, else the walk's own verdict, explained by `error`; `target` is a
    link's resolved target."""

    path: str
    relative: str
    kind: str
    status: str | None = None
    error: str | None = None
    target: str | None = None

    @property
    def name(self) -> str:
        return display_path(self.path)


class SourceError(ValueError):
    """A source that does not exist: named before anything is scanned."""


@dataclass
class Walk:
    """The walk's record of itself: whether every folder it opened kept its access time."""

    atime_kept: bool = True


def real_sources(sources: Iterable[str | os.PathLike]) -> list[str]:
    """Each source's real absolute path; raises `SourceError` naming any that does not exist."""
    out = []
    for raw in sources:
        if not os.path.lexists(raw):
            raise SourceError(f"{display_path(raw)}: no such file or folder")
        out.append(os.path.realpath(raw))
    return out


def named_or_suffixed(entry: Entry, roots: list[str], suffixes: frozenset[str]) -> bool:
    """A file named directly (whatever its name), or one under a folder with one of `suffixes`
    (a file reached through a followed link: by the link's name)."""
    return entry.kind == "file" and (entry.path in roots or os.path.splitext(entry.relative)[1].lower() in suffixes)


def walk(sources: Iterable[str | os.PathLike], follow_links: bool = False, record: Walk | None = None) -> Iterator[Entry]:
    """Every entry under the sources (see the module's docstring), in a stable order."""
    record = record if record is not None else Walk()
    roots = real_sources(sources)
    entered: set[tuple[int, int]] = set()  # (device, inode) of folders walked: no loops
    for root in roots:
        yield from _walk_root(root, roots, follow_links, entered, record)


def _walk_root(root: str, roots: list[str], follow_links: bool, entered: set, record: Walk,
               relative: str = "") -> Iterator[Entry]:
    try:
        info = os.stat(root)
    except OSError as exc:
        yield Entry(root, relative or os.path.basename(root), "file", "missing", f"{display_path(root)}: {exc.strerror}")
        return
    if not stat.S_ISDIR(info.st_mode):
        yield Entry(root, relative or os.path.basename(root), "file")
        return
    stack = [(root, relative)]
    while stack:
        folder, rel = stack.pop()
        listed = _list(folder, record)
        if isinstance(listed, str):
            yield Entry(folder, rel, "folder", "unreadable", listed)
            continue
        names, key = listed
        if key in entered:
            continue
        entered.add(key)
        yield Entry(folder, rel, "folder", "folder")
        subfolders = []
        for name, kind in names:
            path, below = os.path.join(folder, name), os.path.join(rel, name)
            if kind == "folder":
                subfolders.append((path, below))
            elif kind == "link":
                yield from _link(path, below, roots, follow_links, entered, record)
            else:
                yield Entry(path, below, "file")
        stack.extend(reversed(subfolders))


def _list(folder: str, record: Walk) -> tuple[list[tuple[str, str]], tuple[int, int]] | str:
    """The folder's (name, kind) entries sorted by their bytes and its (device, inode); or why
    it cannot be listed."""
    try:
        fd, kept = open_no_atime(folder, _DIR_FLAGS)
    except OSError as exc:
        return f"{display_path(folder)}: folder cannot be listed ({exc.strerror or exc})"
    record.atime_kept &= kept
    try:
        with os.scandir(fd) as it:
            found = [(e.name, _kind(e)) for e in it]
        info = os.fstat(fd)
    except OSError as exc:
        return f"{display_path(folder)}: folder cannot be listed ({exc.strerror or exc})"
    finally:
        os.close(fd)
    found.sort(key=lambda item: os.fsencode(item[0]))
    return found, (info.st_dev, info.st_ino)


def _kind(entry: os.DirEntry) -> str:
    if entry.is_symlink():
        return "link"
    try:
        return "folder" if entry.is_dir(follow_symlinks=False) else "file"
    except OSError:
        return "file"  # its reader will say what is wrong


def _link(path: str, relative: str, roots: list[str], follow_links: bool, entered: set, record: Walk) -> Iterator[Entry]:
    """A symbolic link's entry, and with `follow_links` what lies behind one pointing outside."""
    target = os.path.realpath(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        why = "a loop of symbolic links" if exc.errno == errno.ELOOP else f"its target {display_path(target)} does not exist"
        yield Entry(path, relative, "link", "link_broken", f"{display_path(path)}: symbolic link, {why}", target)
        return
    what = "folder" if stat.S_ISDIR(info.st_mode) else "file"
    if inside(target, roots):
        yield Entry(path, relative, "link", "link", f"symbolic link to the {what} {display_path(target)}, read under its own name", target)
    elif not follow_links:
        yield Entry(path, relative, "link", "link_not_followed",
                    f"{display_path(path)}: symbolic link to the {what} {display_path(target)}, outside the sources; "
                    "not read (--follow-links reads it)", target)
    else:
        yield Entry(path, relative, "link", "link", f"symbolic link to the {what} {display_path(target)}, outside the sources; "
                    "followed (--follow-links)", target)
        yield from _walk_root(target, roots, follow_links, entered, record, relative)

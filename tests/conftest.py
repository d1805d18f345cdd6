"""Shared test material: real UTKFace faces from $MINORAGE_SHARED (default ../shared)."""

from __future__ import annotations

from pathlib import Path

import pytest

from minorage import config


def utkface_age(path: Path) -> int:
    return int(path.name.split("_", 1)[0])


@pytest.fixture(scope="session")
def utkface_files() -> list[Path]:
    """All UTKFace photos, sorted (labels in the names)."""
    return sorted(config.utkface_dir().glob("*.jpg"))


@pytest.fixture(scope="session")
def some_faces(utkface_files) -> list[Path]:
    """A spread of 24 real photos across ages (every 400th file)."""
    return utkface_files[::400][:24]

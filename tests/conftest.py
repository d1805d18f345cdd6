"""Shared test material: real UTKFace faces from $MINORAGE_SHARED (default ../shared)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from minorage import config


#: Chromium as the browser tests start it: headless, as root, and quiet on a closed network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


def utkface_age(path: Path) -> int:
    return int(path.name.split("_", 1)[0])


@functools.cache
def _utkface_files() -> tuple[Path, ...]:
    return tuple(sorted(config.utkface_dir().glob("*.jpg")))


@pytest.fixture(scope="module")
def utkface_files() -> list[Path]:
    """All UTKFace photos, sorted (labels in the names); listed once per test run."""
    return list(_utkface_files())


@pytest.fixture(scope="module")
def some_faces(utkface_files) -> list[Path]:
    """A spread of 24 real photos across ages (every 400th file)."""
    return utkface_files[::400][:24]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """A data set built from 500 real photos and 105 adults aged 26-60, with a planted exact copy under another age:
    (config, folder, summary, the photo that was copied); built once per test run."""
    return _small_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def one_part_model(tmp_path_factory) -> Path:
    """The shipped model as a model of one part: its edge part (v8) where it has one, as its own
    checkpoint, for what takes a model of one part (`calibrate`, `combine --edge`)."""
    from minorage.model.card import ModelCard, packaged_model_path
    from minorage.model.checkpoint import load_checkpoint, save_checkpoint

    net, card = load_checkpoint(packaged_model_path())
    if card.edge:
        net, card = net.edge, ModelCard.from_dict(card.edge)
    return save_checkpoint(net, card, tmp_path_factory.mktemp("one_part") / "model.safetensors")


_built: dict = {}


def _small_dataset(tmp_path_factory):
    if "small" in _built:
        return _built["small"]
    import shutil

    from minorage.config import DatasetConfig
    from minorage.paper.build import build_dataset

    utkface_files = list(_utkface_files())
    folder = tmp_path_factory.mktemp("utk")
    chosen = utkface_files[::19][:500]
    adults: dict[int, list[Path]] = {}  # those file names, sorted, reach few ages past 25: three of each age 26-60
    for f in utkface_files[::5]:
        if 26 <= utkface_age(f) <= 60 and f not in chosen and len(adults.setdefault(utkface_age(f), [])) < 3:
            adults[utkface_age(f)].append(f)
    chosen += [f for photos in adults.values() for f in photos]
    for f in chosen:
        (folder / f.name).symlink_to(f)
    victim = chosen[7]
    age = utkface_age(victim)
    shutil.copy(victim, folder / victim.name.replace(f"{age}_", f"{age + 3}_", 1))
    out = tmp_path_factory.mktemp("ds")
    cfg = DatasetConfig(sources=(("utkface", str(folder)),), per_age=12, adults_per_age=3)  # three: a fifth of each age is tested
    summary = build_dataset(cfg, out, progress=False)
    _built["small"] = cfg, out, summary, victim
    return _built["small"]


def scan_in_background(folder: Path, case: Path, workers: int, stderr=None):
    """`minorage scan folder --out case` in a process group of its own (to be killed whole)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "minorage", "scan", str(folder), "--out", str(case), "--workers", str(workers)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL, start_new_session=True)


def wait_for_files(case: Path, at_least: int, process, seconds: float = 120) -> bool:
    """Wait until the running scan has committed `at_least` files (not folders) to its case."""
    import sqlite3
    import time

    deadline = time.time() + seconds
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
        try:
            done = sqlite3.connect(case / "case.sqlite").execute("SELECT COUNT(*) FROM files WHERE media != 'folder'").fetchone()[0]
        except sqlite3.Error:  # not created yet, or its schema being written
            continue
        if done >= at_least:
            return True
    return False

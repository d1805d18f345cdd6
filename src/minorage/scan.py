"""Bulk triage of a seized collection: `minorage scan`.

Every file under the sources gets one row in the case's SQLite store (CASE_DIR/case.sqlite):
its size, SHA-256, MD5, media type and status; every face found in it (in a video, in the frames
sampled every few seconds) one row more: frame time, box, eye points, detection score, age,
group, minor flag, whether its eyes are barred, and a small thumbnail for the review report.

How it stays safe on evidence and on crashes:
- evidence is only opened for reading; nothing is written beside it;
- worker processes read, hash and detect; the main process estimates ages in batches and writes;
- a file and all its faces are committed in one transaction, so after a kill -9 a file is in
  the store whole or not at all, and a re-run skips exactly the files that are there;
- at most `in_flight` files per worker are queued, so memory does not grow with the collection;
- the model (name and SHA-256) and the detector are recorded with the case; resuming with a
  different model is refused, so one case never mixes two models' ages.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from .config import Framing, ScanConfig
from .detection import DetectorConfig, Face, FaceDetector
from .framing import frame_face
from .io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, ImageReadError, decode_image, looks_like_image, video_frames
from .metrics import age_group, is_minor
from .models import AgeEstimator, file_sha256
from .occlusion import eyes_occluded

CASE_FILE = "case.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS case_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER,
    sha256 TEXT,
    md5 TEXT,
    media TEXT NOT NULL,          -- image | video | other | folder_link
    status TEXT NOT NULL,         -- ok | no_face | empty | too_large | not_image | corrupt | unreadable | missing | not_media | not_regular | link_not_followed | error
    error TEXT,
    frames INTEGER,               -- video frames looked at
    faces INTEGER NOT NULL DEFAULT 0,
    scanned_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL REFERENCES files(id),
    face INTEGER NOT NULL,        -- index within the image or frame, best detection first
    frame_time REAL,              -- seconds into a video; NULL for an image
    x1 REAL, y1 REAL, x2 REAL, y2 REAL,
    left_eye_x REAL, left_eye_y REAL, right_eye_x REAL, right_eye_y REAL,
    score REAL NOT NULL,
    age REAL NOT NULL,
    age_group TEXT NOT NULL,
    minor INTEGER NOT NULL,
    eyes_occluded INTEGER NOT NULL,
    thumbnail BLOB,               -- JPEG of the face, for the review report
    UNIQUE (file_id, frame_time, face)
);
CREATE INDEX IF NOT EXISTS faces_by_age ON faces (minor DESC, age);
"""


# ---------------------------------------------------------------------------------------------
# Walking: every file, nothing silently left out


def walk(sources: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Every file under the sources (files named directly, folders recursively), in a stable
    order, streamed: nothing is held per file, so a walk of millions costs no memory.
    Symbolic links to folders are yielded (to be recorded as not followed), never walked
    into: no loops, and nothing outside the named sources. A file reached through two
    overlapping sources comes twice; the store keeps it once."""
    for raw in sources:
        root = Path(raw)
        if not root.is_dir():  # a folder named directly is walked even through a link
            yield Path(os.path.abspath(root))
            continue
        for folder, dirs, names in os.walk(root, followlinks=False):
            dirs.sort()
            links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
            for name in sorted(names + links):
                yield Path(os.path.abspath(os.path.join(folder, name)))


# ---------------------------------------------------------------------------------------------
# The worker's part: read, hash, detect (in a separate process)


@dataclass
class FoundFace:
    """A face on its way from a worker to the store: the detection, its model input, its thumbnail."""

    face: dict
    frame_time: float | None
    index: int
    crop: np.ndarray
    eyes_occluded: bool
    thumbnail: bytes


@dataclass
class FileResult:
    """What a worker learnt about one file."""

    path: str
    media: str
    status: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    error: str | None = None
    frames: int | None = None
    faces: list[FoundFace] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # reading+hashing, decoding, detection


_worker: dict = {}


def _init_worker(detector_cfg: DetectorConfig, framing: Framing, cfg: ScanConfig) -> None:
    import threading

    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    _worker.update(detector=FaceDetector(detector_cfg), framing=framing, cfg=cfg)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A worker whose scan was killed (kill -9 leaves no chance to stop it) ends itself."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def _media_of(path: Path, head: bytes) -> str:
    """image, video or other: by the name's suffix, else by the first bytes."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if looks_like_image(head):
        return "image"
    if head[4:8] == b"ftyp" or head.startswith(b"\x1a\x45\xdf\xa3") or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return "video"
    return "other"


def _read(path: Path) -> tuple[int, str, str, str, bytes | None]:
    """(size, SHA-256, MD5, media, the bytes if an image) in one read-only pass: an image is
    kept to be decoded, anything else only streamed through the hashes."""
    sha, md5, size, media, kept = hashlib.sha256(), hashlib.md5(), 0, "other", []
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            if not size:
                media = _media_of(path, chunk[:16])
            if media == "image":
                kept.append(chunk)
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    if not size:
        media = _media_of(path, b"")
    return size, sha.hexdigest(), md5.hexdigest(), media, b"".join(kept) if media == "image" else None


def examine(path_text: str) -> FileResult:
    """One file, start to end, never raising: every failure becomes a status and a message."""
    path = Path(path_text)
    try:
        if path.is_symlink() and path.is_dir():
            return FileResult(path_text, "folder_link", "link_not_followed", error=f"{path}: symbolic link to a folder, not followed (name its target to scan it)")
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO or a device would block or never end
            return FileResult(path_text, "other", "not_regular", error=f"{path}: not a regular file (FIFO, socket or device); not read")
        started = time.perf_counter()
        size, sha, md5, media, data = _read(path)
    except OSError as exc:
        return FileResult(path_text, "other", "missing" if isinstance(exc, FileNotFoundError) else "unreadable", error=f"{path}: {exc.strerror or exc}")
    result = FileResult(path_text, media, "ok", size, sha, md5, seconds={"read": time.perf_counter() - started})
    try:
        if result.media == "image":
            _examine_image(path, data, result)
        elif result.media == "video":
            _examine_video(path, result)
        else:
            result.status, result.error = "not_media", f"{path}: neither an image nor a video; not scanned"
    except ImageReadError as exc:
        result.status, result.error = exc.status, str(exc)
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop a scan; its error is recorded
        result.status, result.error = "error", f"{path}: {type(exc).__name__}: {exc}"
    if result.status == "ok" and not result.faces:
        result.status, result.error = "no_face", "no face found"
    return result


def _examine_image(path: Path, data: bytes, result: FileResult) -> None:
    started = time.perf_counter()
    image = decode_image(data, _worker["cfg"].max_pixels, str(path))
    result.seconds["decode"] = time.perf_counter() - started
    result.faces = _faces_in(image, None, result.seconds)


def _examine_video(path: Path, result: FileResult) -> None:
    """Faces in one frame every `video_every` seconds."""
    cfg: ScanConfig = _worker["cfg"]
    looked = 0
    for frame_time, frame in video_frames(path, cfg.video_every, cfg.max_video_frames, cfg.max_pixels):
        result.faces += _faces_in(frame, frame_time, result.seconds)
        looked += 1
    result.frames = looked


def _faces_in(image: np.ndarray, frame_time: float | None, seconds: dict[str, float]) -> list[FoundFace]:
    cfg: ScanConfig = _worker["cfg"]
    started = time.perf_counter()
    out = []
    for index, face in enumerate(_worker["detector"].detect(image)):
        crop = frame_face(image, face.box, _worker["framing"])
        out.append(FoundFace(face.to_dict(), frame_time, index, crop, eyes_occluded(image, face), _thumbnail(image, face, cfg.thumbnail)))
    seconds["detect"] = seconds.get("detect", 0.0) + time.perf_counter() - started
    return out


def _thumbnail(image: np.ndarray, face: Face, side: int) -> bytes:
    """A JPEG of the face with a little context, `side` pixels square."""
    crop = frame_face(image, face.box, Framing(margin=0.2, size=side))
    ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return data.tobytes() if ok else b""


# ---------------------------------------------------------------------------------------------
# The case store


def open_case(case_dir: Path) -> sqlite3.Connection:
    """The case's database (created if new); WAL journal: a kill never corrupts it."""
    case_dir = Path(case_dir)
    case_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(case_dir / CASE_FILE)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    return db


def case_info(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT key, value FROM case_info"))


def _record_model(db: sqlite3.Connection, estimator: AgeEstimator, detector_cfg: DetectorConfig, sources: list[str]) -> None:
    """Write the model and detector into a new case; refuse a resume with another model or
    another minor flag threshold (the case's flags must all mean one thing)."""
    info = {
        "model": estimator.card.name or estimator.source,
        "model_sha256": file_sha256(Path(estimator.source)) if Path(estimator.source).is_file() else estimator.source,
        "minor_below": str(estimator.minor_below),
        "detector": str(asdict(detector_cfg)),
        "minorage_version": __version__,
    }
    known = case_info(db)
    if "model_sha256" in known and known["model_sha256"] != info["model_sha256"]:
        raise ValueError(f"this case was scanned with model {known['model']} ({known['model_sha256'][:12]}); "
                         f"resume it with the same model or start a new case folder")
    if "minor_below" in known and float(known["minor_below"]) != estimator.minor_below:
        raise ValueError(f"this case flags estimates below {known['minor_below']} as minors; resume it with "
                         f"--minor-below {known['minor_below']} or start a new case folder")
    with db:
        db.executemany("INSERT OR IGNORE INTO case_info VALUES (?, ?)", [*info.items(), ("started", _now())])
        db.execute("INSERT OR REPLACE INTO case_info VALUES ('sources', ?)", (" | ".join(sources),))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _store(db: sqlite3.Connection, result: FileResult, ages: np.ndarray, minor_below: float) -> bool:
    """One file and all its faces, in one transaction; False if the file was already there."""
    with db:
        cursor = db.execute(
            "INSERT OR IGNORE INTO files (path, size, sha256, md5, media, status, error, frames, faces, scanned_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (result.path, result.size, result.sha256, result.md5, result.media, result.status, result.error, result.frames, len(result.faces), _now()),
        )
        if cursor.rowcount == 0:  # the same file named twice (overlapping sources): kept once
            return False
        rows = []
        for found, age in zip(result.faces, ages):
            (x1, y1, x2, y2), ((lx, ly), (rx, ry)) = found.face["box"], found.face["eyes"]
            rows.append((cursor.lastrowid, found.index, found.frame_time, x1, y1, x2, y2, lx, ly, rx, ry, found.face["score"],
                         round(float(age), 2), age_group(age), int(is_minor(age, minor_below)), int(found.eyes_occluded), found.thumbnail))
        db.executemany("INSERT INTO faces (file_id, face, frame_time, x1, y1, x2, y2, left_eye_x, left_eye_y, right_eye_x, right_eye_y, "
                       "score, age, age_group, minor, eyes_occluded, thumbnail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    return True


# ---------------------------------------------------------------------------------------------
# The scan


@dataclass
class ScanSummary:
    files: int = 0  # in the sources
    already_done: int = 0  # found in the case from an earlier run
    scanned: int = 0
    faces: int = 0
    minors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # summed over workers: read, decode, detect; age, store

    def add(self, result: FileResult, ages: np.ndarray, minor_below: float) -> None:
        self.scanned += 1
        self.faces += len(ages)
        self.minors += int(np.sum(ages < minor_below))
        self.statuses[result.status] = self.statuses.get(result.status, 0) + 1
        for stage, spent in result.seconds.items():
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + spent

    def line(self) -> str:
        rate = self.scanned / self.seconds if self.seconds else 0.0
        return (f"{self.files} files ({self.already_done} already in the case), {self.scanned} scanned at {rate:.1f} files/s, "
                f"{self.faces} faces, {self.minors} flagged as probable minors; statuses {self.statuses}")


def scan(sources: list[str], case_dir: Path, estimator: AgeEstimator, detector_cfg: DetectorConfig = DetectorConfig(),
         cfg: ScanConfig = ScanConfig(), progress: bool = True) -> ScanSummary:
    """Scan the sources into the case (resuming it); returns what this run did."""
    started = time.time()
    db = open_case(case_dir)
    _record_model(db, estimator, detector_cfg, [os.path.abspath(s) for s in sources])
    total = sum(1 for _ in walk(sources))  # a first, cheap pass: the progress bar's length
    summary = ScanSummary(files=total)
    bar = tqdm(total=total, desc="scan", unit="file", disable=not progress, smoothing=0.1)

    def todo() -> Iterator[str]:
        for path in map(str, walk(sources)):
            if db.execute("SELECT 1 FROM files WHERE path = ?", (path,)).fetchone():
                summary.already_done += 1
                bar.update()
            else:
                yield path

    workers = cfg.workers or os.cpu_count() or 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers have the cores; ages are a small share of the work
    estimator.runtime.bulk()  # traced here, before the workers take the cores, not inside the first batch
    try:
        with get_context("spawn").Pool(workers, _init_worker, (detector_cfg, estimator.framing, cfg)) as pool:
            for batch in _batches(_bounded_map(pool, todo(), workers * cfg.in_flight), cfg.age_batch):
                _estimate_and_store(db, batch, estimator, summary)
                bar.update(len(batch))
    finally:
        torch.set_num_threads(threads)
        bar.close()
        db.close()
    summary.seconds = time.time() - started
    return summary


def _batches(results: Iterator[FileResult], faces: int, seconds: float = 0.5) -> Iterator[list[FileResult]]:
    """Files grouped until they hold `faces` faces or `seconds` have passed (ages are estimated
    a batch at a time; little finished work waits uncommitted)."""
    batch: list[FileResult] = []
    opened = time.perf_counter()
    for result in results:
        if not batch:
            opened = time.perf_counter()
        batch.append(result)
        if sum(len(r.faces) for r in batch) >= faces or time.perf_counter() - opened >= seconds:
            yield batch
            batch = []
    if batch:
        yield batch


def _estimate_and_store(db: sqlite3.Connection, batch: list[FileResult], estimator: AgeEstimator, summary: ScanSummary) -> None:
    """Ages for a batch of files' faces in one pass, then each file committed on its own."""
    started = time.perf_counter()
    crops = [f.crop for r in batch for f in r.faces]
    ages = estimator.predict(np.stack(crops)) if crops else np.zeros(0, np.float32)
    share = (time.perf_counter() - started) / max(1, len(crops))
    position = 0
    for result in batch:
        mine = ages[position : position + len(result.faces)]
        position += len(result.faces)
        result.seconds["age"] = share * len(mine)
        t0 = time.perf_counter()
        stored = _store(db, result, mine, estimator.minor_below)
        result.seconds["store"] = time.perf_counter() - t0
        if stored:
            summary.add(result, mine, estimator.minor_below)


def _bounded_map(pool, paths: Iterable[str], limit: int) -> Iterator[FileResult]:
    """`examine` over the paths in the pool, in order, with at most `limit` files queued."""
    pending: deque = deque()
    for path in paths:
        pending.append(pool.apply_async(examine, (path,)))
        if len(pending) >= limit:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()

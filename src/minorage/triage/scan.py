"""Bulk triage of a seized collection: `minorage scan`.

Every file, folder and link under the sources gets one row in the case (`minorage.case`): its
size, SHA-256, SHA-1, MD5, media type and status; every face found in it (in a video, in the frames
sampled every few seconds) one row more: frame time, box, eye points, detection score, age,
group, minor flag, whether its eyes are barred, and a small thumbnail for the review report.

How it stays safe on evidence and on crashes:
- evidence is only opened for reading (`minorage.io`), its access times kept where the system
  allows; nothing is written beside it, and a case folder inside a source is refused;
- supervised worker processes read, hash and detect (`minorage.workers`): one that dies or hangs
  costs only the file it was on, which is retried once, then recorded as `worker_died`/`timeout`;
- the main process estimates ages in batches and commits each file with all its faces at once,
  so after a kill -9 a re-run skips exactly the files that are whole in the case;
- at most `in_flight` files per worker are queued, and every read is bounded by `max_bytes` and
  `max_pixels`, so memory does not grow with the collection nor with what a file claims;
- every setting that changes results is recorded; a resume with other settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from tqdm import tqdm

from minorage import __version__
from minorage.config import DetectorConfig, Framing, ScanConfig
from minorage.evidence.io import (
    ImageReadError,
    Opened,
    decode_image,
    media_of,
    open_evidence,
    video_frames,
)
from minorage.evidence.paths import display_path
from minorage.evidence.sources import Entry, Walk, real_sources, walk
from minorage.exported import file_sha256
from minorage.faces.detection import Face, FaceDetector, tuned_pair_digest
from minorage.faces.framing import frame_face
from minorage.faces.occlusion import eyes_occluded
from minorage.model.estimator import AgeEstimator
from minorage.triage.case import (
    begin_run,
    end_run,
    insert_file,
    known_path,
    open_case,
    prepare_folder,
)
from minorage.triage.pipeline import FramedFace, Framings, Reading, ages_by_item, find_faces, opinions_by_item
from minorage.triage.workers import Failed, Supervisor

#: Every status a file, folder or link can have in a case, and what it means.
STATUSES = {
    "ok": "read; at least one face",
    "no_face": "read; no face found",
    "empty": "a file of 0 bytes",
    "corrupt": "truncated or damaged image, video that does not open or yields no frame",
    "not_image": "an image name or header on something that is no image format minorage reads",
    "too_large": "above --max-pixels (from the header, before decoding) or, for an image, --max-bytes",
    "unreadable": "permission denied, I/O error, or a folder that cannot be listed",
    "missing": "gone between the walk and the read",
    "not_media": "neither image nor video: listed and hashed, not scanned",
    "not_regular": "FIFO, socket or device: never opened for reading, it could block or never end",
    "folder": "a folder that was listed",
    "link": "a symbolic link whose target is inside the sources (read under its own name) or followed",
    "link_not_followed": "a symbolic link whose target lies outside the sources; not read (--follow-links)",
    "link_broken": "a symbolic link to nothing, or a loop of links",
    "worker_died": "the worker reading it died twice (crash or kill), with the signal",
    "timeout": "no result within --file-timeout seconds; its worker was replaced",
    "error": "anything unforeseen, with its message",
}


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
    edge_filled: bool = False  # framed for the model's edge part (`pipeline.FramedFace`)
    chip: np.ndarray | None = None  # for the model's second opinion (`pipeline.FramedFace`)


@dataclass
class FileResult:
    """What is known of one file, folder or link."""

    path: str
    media: str
    status: str
    size: int | None = None
    sha256: str | None = None
    sha1: str | None = None
    md5: str | None = None
    error: str | None = None
    link_target: str | None = None
    frames: int | None = None
    atime_kept: bool = True
    faces: list[FoundFace] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # reading+hashing, decoding, detection

    @classmethod
    def of_entry(cls, entry: Entry) -> FileResult:
        """A walk's own verdict (folder, link, unlistable folder) as a row."""
        return cls(entry.path, entry.kind, entry.status, error=entry.error, link_target=entry.target)


_worker: dict = {}


def _init_worker(detector_cfg: DetectorConfig, framings: Framings, cfg: ScanConfig) -> None:
    cv2.setNumThreads(1)
    _worker.update(detector=FaceDetector(detector_cfg), framings=framings, cfg=cfg)
    set_torch_threads(1)


def set_torch_threads(threads: int) -> int | None:
    """Where networks run in PyTorch (weights without a current ONNX export), give it `threads`
    threads, as ONNX Runtime runs each network on one; returns how many it had, None where
    PyTorch is not loaded (it is not imported for this)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    return before


def _read(opened: Opened, path: str, max_bytes: int) -> tuple[int, dict[str, str], str, bytes | None]:
    """(size, the SHA-256, SHA-1 and MD5, media, the bytes if an image within `max_bytes`) in one
    pass: the whole file goes through the hashes, 1 MiB at a time; only an image's bytes are kept.
    Why three hashes: hash sets in use (Project VIC, CAID, NSRL) key files by MD5 and SHA-1."""
    hashes, size, media = {"sha256": hashlib.sha256(), "sha1": hashlib.sha1(), "md5": hashlib.md5()}, 0, "other"
    kept: list[bytes] | None = [] if opened.info.st_size <= max_bytes else None
    for chunk in iter(lambda: opened.file.read(1 << 20), b""):
        if not size:
            media = media_of(path, chunk[:16])
        if media == "image" and kept is not None:
            kept = kept + [chunk] if size + len(chunk) <= max_bytes else None
        for digest in hashes.values():
            digest.update(chunk)
        size += len(chunk)
    if not size:
        media = media_of(path, b"")
    data = b"".join(kept) if media == "image" and kept is not None else None
    return size, {name: digest.hexdigest() for name, digest in hashes.items()}, media, data


def examine(path: str) -> FileResult:
    """One file, start to end, never raising: every failure becomes a status and a message."""
    cfg: ScanConfig = _worker["cfg"]
    name = display_path(path)
    result = FileResult(path, "other", "ok")
    try:
        with open_evidence(path) as opened:
            result.atime_kept = opened.atime_kept
            started = time.perf_counter()
            result.size, hashes, result.media, data = _read(opened, path, cfg.max_bytes)
            result.sha256, result.sha1, result.md5 = hashes["sha256"], hashes["sha1"], hashes["md5"]
            result.seconds["read"] = time.perf_counter() - started
            if result.media == "image":
                if data is None and result.size:
                    raise ImageReadError("too_large", f"{name}: {result.size:,} bytes, above the --max-bytes limit of {cfg.max_bytes:,} for an image; not decoded")
                _examine_image(name, data or b"", result)
            elif result.media == "video":
                opened.file.seek(0)
                _examine_video(opened.file, name, result)
            else:
                result.status, result.error = "not_media", f"{name}: neither an image nor a video; not scanned"
    except ImageReadError as exc:
        result.status, result.error = exc.status, str(exc)
    except OSError as exc:
        result.status, result.error = "unreadable", f"{name}: {exc.strerror or exc}"
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop a scan; its error is recorded
        result.status, result.error = "error", f"{name}: {type(exc).__name__}: {exc}"
    if result.status == "ok" and not result.faces:
        result.status, result.error = "no_face", "no face found"
    return result


def _examine_image(name: str, data: bytes, result: FileResult) -> None:
    started = time.perf_counter()
    image = decode_image(data, _worker["cfg"].max_pixels, name)
    result.seconds["decode"] = time.perf_counter() - started
    result.faces = _faces_in(image, None, result.seconds)


def _examine_video(f: BinaryIO, name: str, result: FileResult) -> None:
    """Faces in one frame every `video_every` seconds."""
    cfg: ScanConfig = _worker["cfg"]
    looked = 0
    for frame_time, frame in video_frames(f, name, cfg.video_every, cfg.max_video_frames, cfg.max_pixels, threads=1):
        result.faces += _faces_in(frame, frame_time, result.seconds)
        looked += 1
    result.frames = looked


def _faces_in(image: np.ndarray, frame_time: float | None, seconds: dict[str, float]) -> list[FoundFace]:
    cfg: ScanConfig = _worker["cfg"]
    started = time.perf_counter()
    out = [FoundFace(f.face.to_dict(), frame_time, index, f.crop, eyes_occluded(image, f.face), _thumbnail(image, f.face, cfg.thumbnail),
                     f.edge_filled, f.chip)
           for index, f in enumerate(find_faces(image, _worker["detector"], _worker["framings"]))]
    seconds["detect"] = seconds.get("detect", 0.0) + time.perf_counter() - started
    return out


def _thumbnail(image: np.ndarray, face: Face, side: int) -> bytes:
    """A JPEG of the face with a little context, `side` pixels square."""
    crop = frame_face(image, face.box, Framing(margin=0.2, size=side))
    ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return data.tobytes() if ok else b""


# ---------------------------------------------------------------------------------------------
# The scan


@dataclass
class ScanSummary:
    files: int = 0  # entries in the sources: files, folders, links
    already_done: int = 0  # found in the case from an earlier run
    scanned: int = 0
    faces: int = 0
    minors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # summed over workers: read, decode, detect; age, store
    atime_kept: bool = True
    workers_replaced: int = 0

    def add(self, result: FileResult, flags: list[bool]) -> None:
        self.scanned += 1
        self.faces += len(flags)
        self.minors += sum(flags)
        self.statuses[result.status] = self.statuses.get(result.status, 0) + 1
        self.atime_kept &= result.atime_kept
        for stage, spent in result.seconds.items():
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + spent

    def line(self) -> str:
        rate = self.scanned / self.seconds if self.seconds else 0.0
        replaced = f"; {self.workers_replaced} worker processes replaced" if self.workers_replaced else ""
        return (f"{self.files} entries ({self.already_done} already in the case), {self.scanned} scanned at {rate:.1f} files/s, "
                f"{self.faces} faces, {self.minors} flagged as probable minors; statuses {self.statuses}; "
                f"access times {'preserved' if self.atime_kept else 'NOT preserved (O_NOATIME refused)'}{replaced}")


def _second_opinion(second: dict) -> dict:
    """What a second opinion changes in a case: its veto and raise, and its weight and barred
    part where it has them (so that a case scanned before either still resumes)."""
    return {"veto": second["veto"], "raise": second["raise"], **({"weight": second["weight"]} if second.get("weight") else {}),
            **({"barred": second["barred"]} if "barred" in second else {})}


def scan_settings(estimator: AgeEstimator, reading: Reading, detector_cfg: DetectorConfig, cfg: ScanConfig) -> dict:
    """Every setting that changes what a case holds: a resume must use the same."""
    source = Path(estimator.source)
    return {
        "model": estimator.card.name or estimator.source,
        "model_sha256": file_sha256(source) if source.is_file() else estimator.source,
        "minor_below": estimator.minor_below, "minor_above": reading.minor_above,
        **({"routes": _routes(estimator)} if estimator.edge or estimator.card.minor_below_barred is not None else {}),
        **({"second_opinion": _second_opinion(estimator.card.second_opinion)} if estimator.opinion else {}),
        "calibration": _digest(estimator.card.calibration) if estimator.card.calibration else None,
        "detector": detector_cfg.weights, "min_face_size": detector_cfg.min_face_size,
        **({"tuned_pair": pair} if (pair := tuned_pair_digest(detector_cfg)) else {}),
        "thresholds": list(detector_cfg.thresholds), "yunet_threshold": detector_cfg.yunet_threshold,
        "crop_padding": detector_cfg.crop_padding,
        "pyramid_factor": detector_cfg.factor,
        "max_pixels": cfg.max_pixels, "max_bytes": cfg.max_bytes, "video_every": cfg.video_every,
        "max_video_frames": cfg.max_video_frames, "follow_links": cfg.follow_links,
    }


def _routes(estimator: AgeEstimator) -> list:
    """The flags in force per route and kind of face (main normal, main barred, then the edge
    part's), the edge part's calibration, and the share of a frame past the photo that sends a
    face to it where that is not any (the card's, which the weights' hash does not cover): a
    user's `--minor-below` replaces the flags."""
    parts = [estimator, *([estimator.edge] if estimator.edge else [])]
    edge_calibration = estimator.edge.card.calibration if estimator.edge else None
    above = estimator.framings.edge_above
    return [*(part.flag(barred) for part in parts for barred in (False, True)), _digest(edge_calibration) if edge_calibration else None,
            *([above] if above else [])]


def _digest(data: dict) -> str:
    """A short fingerprint of a calibration (it lives in the model card, beside the weights' hash)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def scan(sources: list[str], case_dir: Path, estimator: AgeEstimator, detector_cfg: DetectorConfig = DetectorConfig(),
         cfg: ScanConfig = ScanConfig(), progress: bool = True) -> ScanSummary:
    """Scan the sources into the case (resuming it); returns what this run did."""
    started = time.time()
    roots = real_sources(sources)
    reading = Reading.of(estimator, cfg.minor_above)
    db = open_case(prepare_folder(case_dir, roots))
    run_id = begin_run(db, scan_settings(estimator, reading, detector_cfg, cfg), roots, __version__)
    total = sum(1 for _ in walk(roots, cfg.follow_links))  # a first, cheap pass: the progress bar's length
    summary, record = ScanSummary(files=total), Walk()
    bar = tqdm(total=total, desc="scan", unit="entry", disable=not progress, smoothing=0.1)

    def todo() -> Iterator[str]:
        for entry in walk(roots, cfg.follow_links, record):
            if known_path(db, entry.path):
                summary.already_done += 1
                bar.update()
            elif entry.status is not None:  # the walk's own verdict: nothing to read
                result = FileResult.of_entry(entry)
                if _store(db, result, np.zeros(0), np.zeros(0), reading, run_id) is not None:
                    summary.add(result, [])
                bar.update()
            else:
                yield entry.path

    workers = cfg.workers or os.cpu_count() or 1
    threads = set_torch_threads(1)  # the workers have the cores; ages are a small share of the work
    pool = Supervisor(workers, _init_worker, (detector_cfg, estimator.framings, cfg), examine, cfg.in_flight, cfg.file_timeout,
                      preload=(__name__,))
    outcome = "interrupted"
    try:
        for batch in _batches(_results(pool.imap(todo())), cfg.age_batch):
            _estimate_and_store(db, batch, estimator, reading, summary, run_id)
            bar.update(len(batch))
        outcome = "finished"
    except Exception as exc:
        outcome = f"failed: {exc}"
        raise
    finally:
        pool.close()
        if threads:
            set_torch_threads(threads)
        bar.close()
        summary.atime_kept &= record.atime_kept
        summary.workers_replaced = pool.replaced
        summary.seconds = time.time() - started
        try:
            end_run(db, run_id, summary.scanned, summary.atime_kept, outcome)
        finally:
            db.close()
    return summary


def _results(done: Iterator[tuple[str, FileResult | Failed]]) -> Iterator[FileResult]:
    """The workers' results, a file no worker could finish recorded with its status."""
    for path, result in done:
        yield FileResult(path, "other", result.status, error=f"{display_path(path)}: {result.message}") if isinstance(result, Failed) else result


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


def _estimate_and_store(db, batch: list[FileResult], estimator: AgeEstimator, reading: Reading, summary: ScanSummary, run_id: int) -> None:
    """Ages for a batch of files' faces in one pass, then each file committed on its own."""
    started = time.perf_counter()
    framed = [[FramedFace(None, f.crop, f.edge_filled, f.chip) for f in r.faces] for r in batch]
    ages, opinions = ages_by_item(framed, estimator), opinions_by_item(framed, estimator)
    share = (time.perf_counter() - started) / max(1, sum(len(r.faces) for r in batch))
    for result, mine, theirs in zip(batch, ages, opinions):
        mine = estimator.blended(mine, [f.eyes_occluded for f in result.faces], theirs)
        result.seconds["age"] = share * len(mine)
        t0 = time.perf_counter()
        flags = _store(db, result, mine, theirs, reading, run_id)
        result.seconds["store"] = time.perf_counter() - t0
        if flags is not None:
            summary.add(result, flags)


def _store(db, result: FileResult, ages: np.ndarray, opinions: np.ndarray, reading: Reading, run_id: int) -> list[bool] | None:
    """One file and all its faces (and a second opinion's age where the model has one), in one
    transaction; the faces' flags, or None if the file was already there."""
    faces, flags, seconds = [], [], []
    for found, age, opinion in zip(result.faces, ages, opinions):
        (x1, y1, x2, y2), ((lx, ly), (rx, ry)) = found.face["box"], found.face["eyes"]
        age, opinion = round(float(age), 2), round(float(opinion), 2)  # as stored: the verdict is the stored ages', read again the same
        said = reading.verdict(age, found.eyes_occluded, found.edge_filled, opinion)
        flags.append(said["minor"])
        faces.append((found.index, found.frame_time, x1, y1, x2, y2, lx, ly, rx, ry, found.face["score"],
                      age, said["group"], int(said["minor"]), said.get("p_minor"), said.get("age_low"), said.get("age_high"),
                      int(found.eyes_occluded), found.thumbnail))
        seconds.append((opinion, said["flag_lifted"]) if said.get("second_opinion_age") is not None else None)
    row = {k: getattr(result, k) for k in ("path", "size", "sha256", "sha1", "md5", "media", "status", "error", "link_target", "frames")}
    return flags if insert_file(db, row, faces, run_id, seconds) else None

"""The paper's balanced minors and young adults set (§3.1, §4), from public age data sets.

The build runs in one direction:

1. read each source in its own published layout (`READERS`) into `Record`s;
2. fingerprint every photo (SHA-256 of the bytes, a 64-bit DCT perceptual hash of the pixels)
   and clean the labels: copies of one photo (same bytes, or hashes within
   `near_duplicate_bits` whose grey thumbnails also correlate by `copy_min_correlation`) form a
   group; a group whose ages disagree is dropped whole, the others keep one photo;
3. select up to N photos per age 0..25 (plus, optionally, adults for the minor/adult decision),
   seeded, reporting shortfalls;
4. find the face, frame it to 64x64, and make its eye-barred twin (§3.2) on the full photo;
5. split 80/20 per age by a seeded hash of the photo, so a photo's copies and its twin share a
   side;
6. store a manifest, one compressed array file per split and variant, and contact sheets.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from minorage.config import DatasetConfig, DetectorConfig, Framing
from minorage.evidence.io import ImageReadError, read_image
from minorage.faces.detection import FaceDetector, main_face
from minorage.faces.framing import frame_detected
from minorage.faces.occlusion import occlude
from minorage.paper.cleaning import (
    Photo,
    clean_labels,
    label_agreement,
    perceptual_hash,
    thumbnail_check,
)
from minorage.paper.readers import Record, read_source
from minorage.paper.store import (
    MANIFEST_COLUMNS,
    SPLITS,
    VARIANTS,
    write_contact_sheets,
)

# ---------------------------------------------------------------------------------------------
# 3. Balanced selection and 5. the split


def _rank(seed: int, key: str) -> str:
    """A seeded, stable order: the same photo gets the same rank in every run."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def select_balanced(photos: list[Photo], ages: Iterable[int], per_age: int, seed: int) -> tuple[list[Photo], dict[int, int]]:
    """Up to `per_age` photos of each age (seeded); returns them and the shortfall per age."""
    by_age: dict[int, list[Photo]] = defaultdict(list)
    for photo in photos:
        by_age[photo.record.age].append(photo)
    chosen, shortfall = [], {}
    for age in ages:
        pool = sorted(by_age.get(age, []), key=lambda p: _rank(seed, p.sha256))
        chosen += pool[:per_age]
        if len(pool) < per_age:
            shortfall[age] = per_age - len(pool)
    return chosen, shortfall


def assign_splits(photos: list[Photo], test_fraction: float, seed: int) -> dict[str, str]:
    """sha256 -> "train" | "test": per age, the photos ranked by a seeded hash, the first
    `test_fraction` go to test. A photo's twin and copies share its sha256, hence its side."""
    by_age: dict[int, list[Photo]] = defaultdict(list)
    for photo in photos:
        by_age[photo.record.age].append(photo)
    split = {}
    for group in by_age.values():
        ranked = sorted(group, key=lambda p: _rank(seed, "split:" + p.sha256))
        n_test = int(round(len(ranked) * test_fraction))
        for k, photo in enumerate(ranked):
            split[photo.sha256] = "test" if k < n_test else "train"
    return split


# ---------------------------------------------------------------------------------------------
# 4. Faces: detection, framing, the eye-barred twin


@dataclass
class PreparedFace:
    """A photo's face, framed as it is (org) and with the eye bar drawn before framing (ocl)."""

    box: tuple[float, float, float, float]
    eyes: np.ndarray
    org: np.ndarray
    ocl: np.ndarray


def prepare_face(image: np.ndarray, detector: FaceDetector, framing: Framing) -> PreparedFace | None:
    face = main_face(detector.detect(image), image.shape)
    if face is None:
        return None
    barred, _ = occlude(image, face)
    return PreparedFace(face.box, face.eyes, frame_detected(image, face, framing), frame_detected(barred, face, framing))


# ---------------------------------------------------------------------------------------------
# The build, resumable through a cache of per-photo work


class _Cache:
    """Per-photo results kept under DIR/cache so an interrupted build resumes where it stopped."""

    def __init__(self, folder: Path, key: str):
        self.folder = folder / "cache" / key
        self.folder.mkdir(parents=True, exist_ok=True)

    def load_jsonl(self, name: str) -> dict[str, dict]:
        path = self.folder / name
        if not path.is_file():
            return {}
        entries = {}
        for line in path.read_text().splitlines():
            try:  # a line cut by an interruption is simply redone
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            entries[entry["key"]] = entry
        return entries

    def append_jsonl(self, name: str, entries: list[dict]) -> None:
        with open(self.folder / name, "a") as f:
            for entry in entries:
                f.write(json.dumps(entry) + "\n")

    def faces_file(self, chunk: int) -> Path:
        return self.folder / f"faces_{chunk:05d}.npz"


def _config_key(cfg: DatasetConfig) -> str:
    """Face preparation depends on framing and detector only: the cache is keyed by them."""
    spec = json.dumps({"framing": cfg.framing.to_dict(), "detector": asdict(cfg.detector)}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def fingerprint(records: list[Record], cache: _Cache, max_pixels: int, progress: bool) -> tuple[list[Photo], list[dict]]:
    """Photos with their hashes; unreadable files are reported."""
    known = cache.load_jsonl("fingerprints.jsonl")
    photos, unreadable, fresh = [], [], []
    for record in tqdm(records, desc="fingerprints", unit="img", disable=not progress):
        key = str(record.path)
        entry = known.get(key)
        if entry is None:
            try:
                data = record.path.read_bytes()
                image = read_image(record.path, max_pixels)
                entry = {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "phash": perceptual_hash(image)}
            except (ImageReadError, OSError) as exc:
                entry = {"key": key, "error": str(exc)}
            fresh.append(entry)
            if len(fresh) >= 500:
                cache.append_jsonl("fingerprints.jsonl", fresh)
                fresh = []
        if "error" in entry:
            unreadable.append({"source": record.source, "source_path": key, "age": record.age, "reason": entry["error"]})
        else:
            photos.append(Photo(record, entry["sha256"], int(entry["phash"])))
    cache.append_jsonl("fingerprints.jsonl", fresh)
    return photos, unreadable


def prepare_faces(photos: list[Photo], cfg: DatasetConfig, cache: _Cache, progress: bool, chunk_size: int = 256,
                  workers: int = 1) -> dict[str, PreparedFace | None]:
    """sha256 -> its prepared face (None: no face found), computed in cached chunks, by
    `workers` processes where more than one (a chunk each at a time; the same faces)."""
    done: dict[str, PreparedFace | None] = {}
    for path in sorted(cache.folder.glob("faces_*.npz")):
        with np.load(path) as npz:  # each npz[key] decompresses its whole array: read each once
            part = {key: npz[key] for key in ("sha256", "box", "eyes", "org", "ocl", "found")}
        for k, sha in enumerate(part["sha256"]):
            done[str(sha)] = PreparedFace(tuple(part["box"][k]), part["eyes"][k], part["org"][k], part["ocl"][k]) if part["found"][k] else None
    todo = [p for p in photos if p.sha256 not in done]
    chunk = len(list(cache.folder.glob("faces_*.npz")))
    bar = tqdm(total=len(photos), initial=len(photos) - len(todo), desc="faces", unit="img", disable=not progress)
    parts = [todo[start : start + chunk_size] for start in range(0, len(todo), chunk_size)]
    jobs = [[str(p.record.path) for p in part] for part in parts]
    with _face_pool(cfg, workers) as pool:
        for part, results in zip(parts, pool(jobs)):
            _save_chunk(cache.faces_file(chunk), part, results, cfg.framing.size)
            chunk += 1
            done.update({p.sha256: r for p, r in zip(part, results)})
            bar.update(len(part))
    bar.close()
    return done


_prep: dict = {}
#: the photos being prepared already passed the build's `max_pixels` when they were fingerprinted
_ALREADY_CHECKED = 10**9


def _init_prep(detector: DetectorConfig, framing: Framing, threads: int | None) -> None:
    """A face-preparing process's detector (one thread each where several run side by side)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    _prep.update(detector=FaceDetector(detector), framing=framing)


def _prepare_chunk(paths: list[str]) -> list[PreparedFace | None]:
    return [prepare_face(read_image(p, _ALREADY_CHECKED), _prep["detector"], _prep["framing"]) for p in paths]


@contextmanager
def _face_pool(cfg: DatasetConfig, workers: int) -> Iterator[Callable[[list[list[str]]], Iterable[list[PreparedFace | None]]]]:
    """`map` of `_prepare_chunk` over chunks, in order: here, or in `workers` processes."""
    if workers <= 1:
        _init_prep(cfg.detector, cfg.framing, None)
        yield lambda jobs: map(_prepare_chunk, jobs)
        return
    with get_context("spawn").Pool(workers, _init_prep, (cfg.detector, cfg.framing, 1)) as pool:
        yield lambda jobs: pool.imap(_prepare_chunk, jobs)


def _save_chunk(path: Path, photos: list[Photo], results: list[PreparedFace | None], size: int) -> None:
    blank = np.zeros((size, size, 3), np.uint8)
    tmp = path.with_name(path.stem + ".part.npz")
    np.savez(
        tmp,
        sha256=np.array([p.sha256 for p in photos]),
        found=np.array([r is not None for r in results]),
        box=np.array([r.box if r else (0, 0, 0, 0) for r in results], np.float32),
        eyes=np.array([r.eyes if r else np.zeros((2, 2)) for r in results], np.float32),
        org=np.array([r.org if r else blank for r in results]),
        ocl=np.array([r.ocl if r else blank for r in results]),
    )
    tmp.replace(path)  # a chunk is there whole or not at all


def build_dataset(cfg: DatasetConfig, out_dir: Path, progress: bool = True, max_pixels: int = 100_000_000, workers: int = 1) -> dict:
    """Build the data set in `out_dir` (resumable; faces prepared by `workers` processes);
    returns the summary also written to dataset.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = _Cache(out_dir, _config_key(cfg))
    records, skipped = [], []
    for name, folder in cfg.sources:
        read = read_source(name, Path(folder))
        records += read.records
        skipped += [{"source": name, "source_path": p, "reason": why} for p, why in read.skipped]
    photos, unreadable = fingerprint(records, cache, max_pixels, progress)
    check = thumbnail_check(cfg.copy_min_correlation, max_pixels)
    kept, dropped = clean_labels(photos, cfg.near_duplicate_bits, check)
    minors, shortfall = select_balanced(kept, range(cfg.min_age, cfg.max_age + 1), cfg.per_age, cfg.seed)
    adults, _ = select_balanced(kept, range(cfg.max_age + 1, cfg.adult_max_age + 1), cfg.adults_per_age, cfg.seed)
    chosen = minors + adults
    faces = prepare_faces(chosen, cfg, cache, progress, workers=workers)
    no_face = [p for p in chosen if faces[p.sha256] is None]
    usable = [p for p in chosen if faces[p.sha256] is not None]
    split = assign_splits(usable, cfg.test_fraction, cfg.seed)
    rows = _write_store(out_dir, usable, faces, split, cfg)
    _write_csv(out_dir / "cleaning.csv", dropped + [{**u, "group_of": ""} for u in unreadable], ("source", "source_path", "sha256", "age", "reason", "group_of"))
    _write_csv(out_dir / "skipped.csv", skipped, ("source", "source_path", "reason"))
    looked_at = check.looked_at if check else []
    _write_csv(out_dir / "copy_check.csv", looked_at, ("path_a", "age_a", "path_b", "age_b", "hash_bits_apart", "correlation", "copies"))
    _write_csv(out_dir / "no_face.csv", [{"source": p.record.source, "source_path": str(p.record.path), "sha256": p.sha256, "age": p.record.age} for p in no_face], ("source", "source_path", "sha256", "age"))
    write_contact_sheets(out_dir)
    summary = {
        "config": cfg.to_dict(),
        "records": len(records),
        "skipped_by_readers": len(skipped),
        "unreadable": len(unreadable),
        "cleaning": dict(Counter(d["kind"] for d in dropped)),
        "copy_check": {"pairs_looked_at": len(looked_at), "not_copies": sum(1 for r in looked_at if r["copies"] == "no")},
        "label_agreement": label_agreement(dropped),
        "after_cleaning": len(kept),
        "selected": len(chosen),
        "shortfall_per_age": shortfall,
        "no_face": len(no_face),
        "faces": {f"{s}_{v}": sum(1 for r in rows if r["split"] == s and r["variant"] == v) for s in SPLITS for v in VARIANTS},
    }
    (out_dir / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _write_store(out_dir: Path, photos: list[Photo], faces: dict[str, PreparedFace | None], split: dict[str, str], cfg: DatasetConfig) -> list[dict]:
    """manifest.csv and faces/{split}_{variant}.npz; ids are stable: the first 16 hex of sha256."""
    rows = []
    (out_dir / "faces").mkdir(exist_ok=True)
    ordered = sorted(photos, key=lambda p: (p.record.age, p.sha256))
    for s in SPLITS:
        members = [p for p in ordered if split[p.sha256] == s]
        for variant in VARIANTS:
            ids = np.array([p.sha256[:16] for p in members])
            arrays = [getattr(faces[p.sha256], variant) for p in members]
            stack = np.stack(arrays) if arrays else np.zeros((0, cfg.framing.size, cfg.framing.size, 3), np.uint8)
            np.savez_compressed(out_dir / "faces" / f"{s}_{variant}.npz", faces=stack, ids=ids, ages=np.array([p.record.age for p in members], np.int16))
            for p in members:
                face = faces[p.sha256]
                rows.append({
                    "id": p.sha256[:16], "source": p.record.source, "source_path": str(p.record.path), "sha256": p.sha256,
                    "phash": f"{p.phash:016x}", "age": p.record.age, "split": s, "variant": variant,
                    "box": json.dumps([round(float(v), 1) for v in face.box]), "eyes": json.dumps([[round(float(v), 1) for v in point] for point in face.eyes]),
                })
    _write_csv(out_dir / "manifest.csv", rows, MANIFEST_COLUMNS)
    return rows

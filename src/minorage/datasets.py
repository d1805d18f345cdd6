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

DiF (IBM's Diversity in Faces), the paper's fifth source, was withdrawn by IBM and is not
obtainable; minorage has no reader for it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .config import AGE_GROUPS, CHILD_LIMIT, MINOR_LIMIT, Framing
from .detection import DetectorConfig, FaceDetector, main_face
from .framing import frame_face
from .io import ImageReadError, read_image
from .occlusion import occlude

VARIANTS = ("org", "ocl")
SPLITS = ("train", "test")
MANIFEST_COLUMNS = ("id", "source", "source_path", "sha256", "phash", "age", "split", "variant", "box", "eyes")

#: where each public data set is obtained (none is downloaded by minorage)
WHERE_TO_GET = {
    "utkface": "UTKFace, 'Aligned & Cropped Faces' (Zhang, Song and Qi, CVPR 2017): susanqq.github.io/UTKFace; non-commercial research only",
    "appa-real": "APPA-REAL (Agustsson et al., FG 2017): ChaLearn LAP 2017 release, appa-real-release.zip",
    "agedb": "AgeDB (Moschoglou et al., CVPRW 2017): on request from the authors at Imperial College London (ibug)",
    "imdb": "IMDB-WIKI (Rothe et al., 2015): data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki, imdb_crop.tar with imdb.mat",
    "wiki": "IMDB-WIKI (Rothe et al., 2015): data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki, wiki_crop.tar with wiki.mat",
    "fgnet": "FG-NET Aging Database (Lanitis et al.): distributed by its maintainers; 1,002 images of 82 people",
    "csv": "any folder with a CSV of `path,age` (paths relative to the CSV)",
    "dif": "Diversity in Faces (IBM, 2019): withdrawn by IBM in 2020; no longer obtainable",
}


# ---------------------------------------------------------------------------------------------
# 1. Readers, one per published layout


@dataclass(frozen=True)
class Record:
    """One labelled photo of a source."""

    source: str
    path: Path
    age: int


@dataclass
class SourceRead:
    """A reader's result: the records, and what it passed over and why."""

    records: list[Record] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


# AGE_GENDER_RACE_DATETIME.jpg.chip.jpg; a few real names lack the race, a dot, or have a space
_UTK_NAME = re.compile(r"^(\d{1,3})_\d(_\d)?_\d+\s*\.?jpg(\.chip\.jpg)?$", re.IGNORECASE)
_AGEDB_NAME = re.compile(r"^\d+_.+_(\d+)_[mf]\.jpg$", re.IGNORECASE)
_FGNET_NAME = re.compile(r"^(\d{3})A(\d{2})[a-z]?\.jpg$", re.IGNORECASE)


def _read_by_name(source: str, root: Path, pattern: re.Pattern, age_group: int) -> SourceRead:
    """Sources whose labels are in the file names."""
    out = SourceRead()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg")):
        match = pattern.match(path.name)
        if match:
            out.records.append(Record(source, path, int(match.group(age_group))))
        else:
            out.skipped.append((str(path), "file name does not follow the data set's pattern"))
    return out


#: What UTKFace's file names say beside the age: `AGE_GENDER_RACE_DATETIME`.
UTK_SEXES = {"0": "male", "1": "female"}
UTK_ETHNICITIES = {"0": "White", "1": "Black", "2": "Asian", "3": "Indian", "4": "Others"}
UNKNOWN = "unknown"


def demographics(source: str, path: str) -> tuple[str, str]:
    """(sex, ethnicity) as a source's file name labels the photo; `unknown` where it says nothing
    (UTKFace names a sex and, mostly, an ethnicity; AgeDB a sex; the others neither)."""
    parts = Path(path).name.split("_")
    if source == "utkface" and len(parts) >= 3:
        ethnicity = UTK_ETHNICITIES.get(parts[2], UNKNOWN) if len(parts) >= 4 else UNKNOWN
        return UTK_SEXES.get(parts[1], UNKNOWN), ethnicity
    if source == "agedb" and len(parts) >= 4:
        return {"m": "male", "f": "female"}.get(Path(parts[-1]).stem.lower(), UNKNOWN), UNKNOWN
    return UNKNOWN, UNKNOWN


def read_utkface(root: Path) -> SourceRead:
    """UTKFace: `AGE_GENDER_RACE_DATETIME.jpg[.chip.jpg]` (no age 0: babies are labelled 1)."""
    return _read_by_name("utkface", root, _UTK_NAME, 1)


def read_agedb(root: Path) -> SourceRead:
    """AgeDB: `ID_name_age_gender.jpg`, e.g. `0_MariaCallas_35_f.jpg`."""
    return _read_by_name("agedb", root, _AGEDB_NAME, 1)


def read_fgnet(root: Path) -> SourceRead:
    """FG-NET: `001A02.JPG` is subject 001 at age 2 (a letter may follow the age)."""
    return _read_by_name("fgnet", root, _FGNET_NAME, 2)


def read_appa_real(root: Path, apparent: bool = False) -> SourceRead:
    """APPA-REAL: `{train,valid,test}/NNNNNN.jpg` with `gt_avg_{split}.csv` (file_name,
    num_ratings, apparent_age_avg, apparent_age_std, real_age); the real age by default."""
    out = SourceRead()
    column = "apparent_age_avg" if apparent else "real_age"
    for split in ("train", "valid", "test"):
        table = root / f"gt_avg_{split}.csv"
        if not table.is_file():
            continue
        with open(table, newline="") as f:
            for row in csv.DictReader(f):
                path = root / split / row["file_name"]
                if path.is_file():
                    out.records.append(Record("appa-real", path, int(round(float(row[column])))))
                else:
                    out.skipped.append((str(path), f"listed in {table.name} but missing"))
    if not out.records and not out.skipped:
        out.skipped.append((str(root), "no gt_avg_{train,valid,test}.csv found"))
    return out


def _matlab_year(datenum: float) -> int:
    """The year of a MATLAB serial date (days from year 0)."""
    return (date.fromordinal(max(1, int(datenum))) - timedelta(days=366)).year


def read_imdb_wiki(root: Path, kind: str = "imdb", min_face_score: float = 1.0) -> SourceRead:
    """IMDB-WIKI: `{kind}.mat` (struct `kind` with dob, photo_taken, full_path, face_score,
    second_face_score) beside the photo folders; age = year taken - year of birth. Photos
    whose face score is below `min_face_score` (or -inf: no face) or that have a second face
    are passed over."""
    from scipy.io import loadmat

    out = SourceRead()
    table = loadmat(str(root / f"{kind}.mat"))[kind][0, 0]
    fields = {name: np.asarray(table[name]).ravel() for name in ("dob", "photo_taken", "full_path", "face_score", "second_face_score")}
    for dob, taken, rel, score, second in zip(*fields.values()):
        rel = str(np.asarray(rel).ravel()[0])
        path = root / rel
        if not np.isfinite(score) or score < min_face_score:
            out.skipped.append((str(path), f"face score {score:.2f} below {min_face_score}"))
        elif not np.isnan(second):
            out.skipped.append((str(path), "a second face"))
        elif not path.is_file():
            out.skipped.append((str(path), "listed but missing"))
        else:
            out.records.append(Record(kind, path, int(taken) - _matlab_year(float(dob))))
    return out


def read_csv_folder(root: Path) -> SourceRead:
    """Any folder with `labels.csv` (or the one CSV in it) of `path,age`, paths relative to it."""
    out = SourceRead()
    tables = [root / "labels.csv"] if (root / "labels.csv").is_file() else sorted(root.glob("*.csv"))
    if len(tables) != 1:
        out.skipped.append((str(root), f"expected labels.csv or one CSV, found {len(tables)}"))
        return out
    with open(tables[0], newline="") as f:
        for row in csv.DictReader(f):
            path = root / row["path"]
            try:
                age = int(round(float(row["age"])))
            except (KeyError, ValueError):
                out.skipped.append((str(path), f"no usable age: {row.get('age')!r}"))
                continue
            if path.is_file():
                out.records.append(Record(root.name, path, age))
            else:
                out.skipped.append((str(path), "listed but missing"))
    return out


READERS: dict[str, Callable[[Path], SourceRead]] = {
    "utkface": read_utkface,
    "appa-real": read_appa_real,
    "agedb": read_agedb,
    "imdb": lambda root: read_imdb_wiki(root, "imdb"),
    "wiki": lambda root: read_imdb_wiki(root, "wiki"),
    "fgnet": read_fgnet,
    "csv": read_csv_folder,
}


def read_source(name: str, root: Path) -> SourceRead:
    if name == "dif":
        raise ValueError(f"dif: {WHERE_TO_GET['dif']}")
    if name not in READERS:
        raise ValueError(f"unknown source {name!r}; one of {', '.join(READERS)}")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{name}: no folder at {root} ({WHERE_TO_GET[name]})")
    return READERS[name](Path(root))


# ---------------------------------------------------------------------------------------------
# 2. Fingerprints and label cleaning


def grey_thumbnail(image: np.ndarray) -> np.ndarray:
    """The photo as a 32x32 grey float copy: what both copy tests below look at."""
    return cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit DCT hash: the signs of the 8x8 lowest frequencies of a 32x32 grey copy against
    their median. Survives re-encoding, resizing and colour changes, and re-crops of about 1 %
    of the side (on aligned faces a 2 % re-crop moves it by up to 6 bits)."""
    low = cv2.dct(grey_thumbnail(image))[:8, :8].ravel()
    bits = low > np.median(low[1:])
    bits[0] = False  # the DC term says only how bright the photo is
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


@dataclass(frozen=True)
class Photo:
    """A record with its fingerprints."""

    record: Record
    sha256: str
    phash: int


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit differences between uint64 hashes (broadcasting)."""
    x = np.bitwise_xor(a, b)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)


def thumbnail_correlation(a: Path, b: Path, max_pixels: int) -> float:
    """Pearson correlation of two photos' grey thumbnails (-1 when either cannot be read again).

    Why: on aligned faces the 64-bit hash alone joins different photos. Building from UTKFace's
    pool, the check looks at 337 pairs of files within 4 bits (`copy_check.csv`); the 19 below 0.9
    (0.58-0.89) were two different photos in every case (looked at in session 13, a few of one
    person), those above (0.91 and up) copies re-encoded, resized, recoloured or watermarked."""
    try:
        x, y = (grey_thumbnail(read_image(p, max_pixels)).ravel() for p in (a, b))
    except (ImageReadError, OSError):
        return -1.0
    x, y = x - x.mean(), y - y.mean()
    return float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-6))


def _near_pairs(photos: list[Photo], max_bits: int) -> set[tuple[int, int]]:
    """Index pairs (i < j) whose perceptual hashes are at most `max_bits` apart."""
    hashes = np.array([p.phash for p in photos], dtype=np.uint64)
    blocks = hashes.astype(">u8").view(np.uint8).reshape(-1, 8)
    pairs: set[tuple[int, int]] = set()
    for b in range(8):
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, value in enumerate(blocks[:, b]):
            buckets[int(value)].append(i)
        for members in buckets.values():
            if len(members) < 2:
                continue
            m = np.array(members)
            close = hamming(hashes[m][:, None], hashes[m][None, :]) <= max_bits
            pairs.update((int(m[a]), int(m[c])) for a, c in zip(*np.nonzero(np.triu(close, 1))))
    return pairs


SamePicture = Callable[[Photo, Photo], bool]  # the second look at two photos whose hashes are close


def duplicate_groups(photos: list[Photo], max_bits: int, same_picture: SamePicture | None = None) -> list[list[int]]:
    """Indices of photos that are copies of each other: the same bytes, or perceptual hashes
    at most `max_bits` apart (found through 8 one-byte blocks: two hashes within 7 bits share
    at least one block exactly) that `same_picture` confirms (none: the hash alone decides, as
    in the builds before session 13)."""
    if max_bits > 7:
        raise ValueError("near-duplicate search supports at most 7 differing bits")
    uf = _UnionFind(len(photos))
    first_with: dict[str, int] = {}
    for i, photo in enumerate(photos):
        uf.union(i, first_with.setdefault(photo.sha256, i))
    for i, j in sorted(_near_pairs(photos, max_bits)):
        if uf.find(i) == uf.find(j):
            continue
        if same_picture is None or same_picture(photos[i], photos[j]):
            uf.union(i, j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(photos)):
        groups[uf.find(i)].append(i)
    return list(groups.values())


CONFLICT = "conflicting ages"  # the cleaning report's reason for a group of copies labelled differently


def clean_labels(photos: list[Photo], max_bits: int, same_picture: SamePicture | None = None) -> tuple[list[Photo], list[dict]]:
    """Drop groups of copies whose ages disagree, keep one photo of every other group.
    Returns the kept photos and one report row per dropped photo."""
    kept, dropped = [], []
    for group in duplicate_groups(photos, max_bits, same_picture):
        members = sorted((photos[i] for i in group), key=lambda p: (p.record.source, str(p.record.path)))
        ages = sorted({p.record.age for p in members})
        if len(ages) > 1:
            detail = f" {ages} among {len(members)} copies"
            dropped += [_dropped(p, CONFLICT, members[0], detail) for p in members]
            continue
        kept.append(members[0])
        dropped += [_dropped(p, _copy_kind(p, members[0]), members[0]) for p in members[1:]]
    kept.sort(key=lambda p: (p.record.source, str(p.record.path)))
    return kept, dropped


def label_agreement(dropped: list[dict]) -> dict[str, int | float]:
    """How often the source gave one photo two ages, from the cleaning report (its rows, in
    memory or read back from cleaning.csv): every group of copies, those whose ages disagree and
    by how much, and how many copies were labelled both a minor and an adult, overall and where
    a copy was labelled 16 or 17. Why: copies are the only photos labelled twice, so this is the
    one measure of label noise that needs no model; the minor flag cannot beat its labels."""
    groups: dict[str, list[tuple[bool, int]]] = defaultdict(list)
    for row in dropped:
        if row.get("group_of"):  # unreadable files belong to no group
            groups[row["group_of"]].append((row["reason"].startswith(CONFLICT), int(row["age"])))
    conflicts = [sorted(age for _, age in rows) for rows in groups.values() if rows[0][0]]
    near_line = [ages for ages in conflicts if any(CHILD_LIMIT <= a < MINOR_LIMIT for a in ages)]
    near_line_agreeing = sum(1 for rows in groups.values() if not rows[0][0] and CHILD_LIMIT <= rows[0][1] < MINOR_LIMIT)
    return {
        "groups_of_copies": len(groups),
        "groups_with_conflicting_ages": len(conflicts),
        "median_age_span_of_conflicts": float(np.median([a[-1] - a[0] for a in conflicts])) if conflicts else 0.0,
        "groups_labelled_minor_and_adult": sum(1 for a in conflicts if a[0] < MINOR_LIMIT <= a[-1]),
        "groups_with_a_copy_labelled_16_17": len(near_line) + near_line_agreeing,
        "of_which_also_labelled_adult": sum(1 for a in near_line if a[-1] >= MINOR_LIMIT),
    }


@dataclass
class ThumbnailCheck:
    """The second look at photos with close hashes: copies only if their thumbnails correlate by
    `min_correlation`. It keeps every pair it looked at, for `copy_check.csv`: what the hash alone
    would have joined is there to inspect."""

    min_correlation: float
    max_pixels: int
    looked_at: list[dict] = field(default_factory=list)

    def __call__(self, a: Photo, b: Photo) -> bool:
        correlation = thumbnail_correlation(a.record.path, b.record.path, self.max_pixels)
        same = correlation >= self.min_correlation
        self.looked_at.append({"path_a": str(a.record.path), "age_a": a.record.age, "path_b": str(b.record.path), "age_b": b.record.age,
                               "hash_bits_apart": bin(a.phash ^ b.phash).count("1"), "correlation": round(correlation, 4),
                               "copies": "yes" if same else "no"})
        return same


def thumbnail_check(min_correlation: float, max_pixels: int) -> ThumbnailCheck | None:
    """The thumbnail test at `min_correlation`, or none at 0."""
    return ThumbnailCheck(min_correlation, max_pixels) if min_correlation > 0 else None


def _copy_kind(photo: Photo, keeper: Photo) -> str:
    return "exact duplicate" if photo.sha256 == keeper.sha256 else "near duplicate"


def _dropped(photo: Photo, kind: str, keeper: Photo, detail: str = "") -> dict:
    return {"source": photo.record.source, "source_path": str(photo.record.path), "sha256": photo.sha256,
            "age": photo.record.age, "kind": kind, "reason": kind + detail, "group_of": str(keeper.record.path)}


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
    return PreparedFace(face.box, face.eyes, frame_face(image, face.box, framing), frame_face(barred, face.box, framing))


# ---------------------------------------------------------------------------------------------
# The build, resumable through a cache of per-photo work


@dataclass(frozen=True)
class DatasetConfig:
    """What decides a data set's content (recorded in dataset.json)."""

    sources: tuple[tuple[str, str], ...]  # (reader name, folder)
    per_age: int = 250
    min_age: int = 0
    max_age: int = 25
    adults_per_age: int = 0  # photos per age above max_age, for the minor/adult decision
    adult_max_age: int = 60
    seed: int = 0
    test_fraction: float = 0.2
    near_duplicate_bits: int = 4  # chosen on UTKFace, see the README's data set section
    copy_min_correlation: float = 0.9  # near copies must look alike pixel by pixel too (0: hash only, the builds before session 13)
    framing: Framing = Framing()
    detector: DetectorConfig = DetectorConfig(weights="stock")  # the paper's MTCNN, on unbarred photos

    def to_dict(self) -> dict:
        out = asdict(self)
        out["sources"] = [list(s) for s in self.sources]
        return out


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
    spec = json.dumps({"framing": asdict(cfg.framing), "detector": asdict(cfg.detector)}, sort_keys=True)
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


def _init_prep(detector: DetectorConfig, framing: Framing, threads: int | None) -> None:
    """A face-preparing process's detector (one thread each where several run side by side)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    _prep.update(detector=FaceDetector(detector), framing=framing)


def _prepare_chunk(paths: list[str]) -> list[PreparedFace | None]:
    return [prepare_face(read_image(p, 10**9), _prep["detector"], _prep["framing"]) for p in paths]


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


def _read_csv(path: Path) -> list[dict]:
    """A report's rows, none when it is missing (a data set from before the report existed)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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


# ---------------------------------------------------------------------------------------------
# Reading a built data set


@dataclass
class FaceSet:
    """Faces of one split: uint8 (N, 64, 64, 3) BGR, ages (N,), photo ids (N,), variants (N,)."""

    faces: np.ndarray
    ages: np.ndarray
    ids: np.ndarray
    variants: np.ndarray

    def __len__(self) -> int:
        return len(self.ages)

    def subset(self, mask: np.ndarray) -> "FaceSet":
        return FaceSet(self.faces[mask], self.ages[mask], self.ids[mask], self.variants[mask])

    def cap_per_age(self, per_age: int, seed: int = 0) -> "FaceSet":
        """At most `per_age` photos of each whole age, a seeded choice that does not depend
        on the order of the faces; a photo's Org and Ocl faces stay together (the paper's
        training sizes: N photos per age)."""
        photos = sorted(set(zip(self.ids.tolist(), np.rint(self.ages).astype(int).tolist())))
        rng = np.random.default_rng(seed)
        keys = rng.permutation(len(photos))
        kept: set = set()
        for age in {a for _, a in photos}:
            mine = sorted((k, i) for k, (i, a) in zip(keys, photos) if a == age)
            kept.update(i for _, i in mine[:per_age])
        return self.subset(np.isin(self.ids, list(kept)))


def load_faces(data_dir: Path, split: str, variant: str = "org") -> FaceSet:
    """One split's faces in one call; variant "org", "ocl" or "org+ocl" (both, twins share ids)."""
    parts = []
    for v in VARIANTS if variant == "org+ocl" else (variant,):
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; org, ocl or org+ocl")
        path = Path(data_dir) / "faces" / f"{split}_{v}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"no {split} faces at {path}: is {data_dir} a data set built by `minorage dataset build`?")
        with np.load(path) as f:
            parts.append(FaceSet(f["faces"], f["ages"].astype(np.float32), f["ids"], np.full(len(f["ids"]), v)))
    return FaceSet(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("faces", "ages", "ids", "variants")))


def photo_demographics(data_dir: Path) -> dict[str, tuple[str, str]]:
    """Photo id -> (sex, ethnicity), from a data set's manifest (see `demographics`)."""
    path = Path(data_dir) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest.csv in {data_dir}: build it with `minorage dataset build`")
    return {row["id"]: demographics(row["source"], row["source_path"]) for row in _read_csv(path)}


def dataset_info(data_dir: Path) -> dict:
    """Counts per age, split and variant of a built data set, from its manifest, and the label
    agreement among the copies its cleaning found."""
    path = Path(data_dir) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest.csv in {data_dir}: build it with `minorage dataset build`")
    rows = _read_csv(path)
    counts: dict[int, Counter] = defaultdict(Counter)
    for row in rows:
        counts[int(row["age"])][f"{row['split']}_{row['variant']}"] += 1
    summary = json.loads((Path(data_dir) / "dataset.json").read_text()) if (Path(data_dir) / "dataset.json").is_file() else {}
    return {
        "folder": str(data_dir),
        "photos": len({row["id"] for row in rows}),
        "faces": len(rows),
        "sources": dict(Counter(row["source"] for row in rows if row["variant"] == "org")),
        "per_age": {age: dict(c) for age, c in sorted(counts.items())},
        "shortfall_per_age": summary.get("shortfall_per_age", {}),
        "cleaning": summary.get("cleaning", {}),
        "label_agreement": label_agreement(_read_csv(Path(data_dir) / "cleaning.csv")),
        "no_face": summary.get("no_face"),
        "framing": summary.get("config", {}).get("framing"),
    }


def write_contact_sheets(data_dir: Path, per_sheet: int = 64) -> list[Path]:
    """One PNG per age group (and adults): org and ocl faces of the training split side by side,
    labelled with their ages, for the manual inspection the paper did."""
    written = []
    train_org, train_ocl = load_faces(data_dir, "train", "org"), load_faces(data_dir, "train", "ocl")
    groups = [*AGE_GROUPS, ("26+", 26, 200)]
    for name, low, high in groups:
        index = np.flatnonzero((train_org.ages >= low) & (train_org.ages <= high))
        if not len(index):
            continue
        index = index[np.linspace(0, len(index) - 1, min(per_sheet, len(index))).astype(int)]
        tiles = []
        for i in index:
            pair = np.concatenate([train_org.faces[i], train_ocl.faces[i]], axis=1)
            tile = cv2.resize(pair, (256, 128), interpolation=cv2.INTER_NEAREST)
            cv2.putText(tile, str(int(train_org.ages[i])), (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 255), 2)
            tiles.append(tile)
        columns = 8
        tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
        sheet = np.concatenate([np.concatenate(tiles[r : r + columns], axis=1) for r in range(0, len(tiles), columns)], axis=0)
        path = Path(data_dir) / "contact" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), sheet)
        written.append(path)
    return written

"""Step 1 of the data set build (§3.1): each public age data set read in its own published layout
into labelled `Record`s, and UTKFace's sex and ethnicity from its file names.

DiF (IBM's Diversity in Faces), the paper's fifth source, was withdrawn by IBM and is not
obtainable; minorage has no reader for it.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np

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

"""The case store: one SQLite file per case (CASE_DIR/case.sqlite), its schema, its writes and
its read-only opening.

- Every file, folder and link seen has a row in `files`, named by its path as text (bytes that
  are not UTF-8 shown as \\xNN) and keyed by its exact bytes (`path_bytes`), so no name, however
  odd, can stop a scan or hide a file behind another.
- A file and all its faces are committed in one transaction (WAL journal), so after a crash or a
  `kill -9` a file is in the case whole or not at all.
- A model's second opinion on a face with open eyes (its age, and whether it lifted the flag)
  has a row in `second_opinions`; a case scanned with a model that has none, or by an earlier
  minorage, has none.
- `case_info` holds every setting that changes results; a resume with other settings is
  refused, naming each difference. `runs` records each run: sources, times, outcome, and
  whether access times were preserved.
- A damaged or foreign database, a full disk, an output folder that is a file or lies inside the
  evidence: each is a `CaseError` with a message that names the file, never a traceback.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from minorage.evidence.paths import display_path, inside
from minorage.groups import flag_rule

CASE_FILE = "case.sqlite"
SCHEMA_VERSION = "5"  # 3: files.sha1; 4: faces.p_minor, age_low, age_high; reviews; 5: age_high 26 is "26 or older"

SCHEMA = """
CREATE TABLE IF NOT EXISTS case_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started TEXT NOT NULL,
    ended TEXT,
    sources TEXT NOT NULL,        -- JSON list of the real paths scanned
    minorage_version TEXT NOT NULL,
    scanned INTEGER,              -- files this run added
    atime_preserved TEXT,         -- yes | no: every file and folder opened with O_NOATIME
    outcome TEXT                  -- finished | interrupted | failed: ...
);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,           -- the path as text; bytes that are not UTF-8 as \\xNN
    path_bytes BLOB NOT NULL UNIQUE,  -- the exact path
    size INTEGER,
    sha256 TEXT,
    sha1 TEXT,
    md5 TEXT,
    media TEXT NOT NULL,          -- image | video | other | folder | link
    status TEXT NOT NULL,         -- see minorage.triage.scan.STATUSES
    error TEXT,
    link_target TEXT,             -- a symbolic link's resolved target
    frames INTEGER,               -- video frames looked at
    faces INTEGER NOT NULL DEFAULT 0,
    scanned_at TEXT NOT NULL,
    run_id INTEGER REFERENCES runs(id)
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
    p_minor REAL,                 -- calibrated probability of being under 18 (NULL: model not calibrated)
    age_low REAL,                 -- the 90 % interval of the age; age_high past the model's
    age_high REAL,                -- ceiling (26) means "or older"
    eyes_occluded INTEGER NOT NULL,
    thumbnail BLOB,               -- JPEG of the face, for the review report
    UNIQUE (file_id, frame_time, face)
);
CREATE INDEX IF NOT EXISTS faces_by_age ON faces (minor DESC, age);
CREATE TABLE IF NOT EXISTS second_opinions (  -- a model's second network on a face with open eyes
    face_id INTEGER PRIMARY KEY REFERENCES faces(id),
    age REAL NOT NULL,
    flag_lifted INTEGER NOT NULL  -- 1: the face was flagged by its age and this lifted the flag
);
CREATE TABLE IF NOT EXISTS reviews (  -- an examiner's decisions; append-only: the latest per face counts
    id INTEGER PRIMARY KEY,
    face_id INTEGER NOT NULL REFERENCES faces(id),
    decision TEXT NOT NULL CHECK (decision IN ('minor', 'adult', 'not_face', 'unsure')),
    note TEXT,
    reviewer TEXT NOT NULL,
    at TEXT NOT NULL              -- UTC, ISO 8601
);
CREATE INDEX IF NOT EXISTS reviews_by_face ON reviews (face_id, id);
CREATE TRIGGER IF NOT EXISTS reviews_never_updated BEFORE UPDATE ON reviews
    BEGIN SELECT RAISE(ABORT, 'reviews are append-only'); END;
CREATE TRIGGER IF NOT EXISTS reviews_never_deleted BEFORE DELETE ON reviews
    BEGIN SELECT RAISE(ABORT, 'reviews are append-only'); END;
CREATE VIEW IF NOT EXISTS decisions AS  -- each reviewed face's latest decision
    SELECT r.face_id, r.decision, r.note, r.reviewer, r.at FROM reviews r
    JOIN (SELECT MAX(id) AS id FROM reviews GROUP BY face_id) latest ON latest.id = r.id;
"""

#: Settings that change a case's results, with the option that sets each.
SETTING_OPTIONS = {
    "model": "--model", "model_sha256": "--model (SHA-256)", "minor_below": "--minor-below", "minor_above": "--minor-above",
    "calibration": "--model (its calibration)", "routes": "--minor-below (flags per route: normal, barred, edge normal, edge barred)",
    "detector": "--detector", "tuned_pair": "--detector (its eye-bar-tuned R/O-Net weights)",
    "min_face_size": "--min-face-size", "thresholds": "--thresholds",
    "yunet_threshold": "--yunet-threshold", "crop_padding": "--crop-padding", "pyramid_factor": "--pyramid-factor",
    "max_pixels": "--max-pixels", "max_bytes": "--max-bytes", "video_every": "--video-every",
    "max_video_frames": "--max-video-frames", "follow_links": "--follow-links",
}


class CaseError(Exception):
    """A case that cannot be opened, resumed or written; the message names the file and what to do."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def prepare_folder(case_dir: Path, roots: list[str]) -> Path:
    """The case folder, created if new; refused if it is a file or lies inside the evidence."""
    real = os.path.realpath(case_dir)
    root = inside(real, roots)
    if root is not None:
        raise CaseError(f"{display_path(case_dir)}: the case folder lies inside the source {display_path(root)}; "
                        "evidence is never written to: put the case elsewhere")
    if os.path.lexists(case_dir) and not os.path.isdir(case_dir):
        raise CaseError(f"{display_path(case_dir)}: exists and is not a folder; --out takes a case folder")
    try:
        Path(case_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CaseError(f"{display_path(case_dir)}: cannot create the case folder ({exc.strerror or exc})") from exc
    return Path(case_dir)


def _damaged(path: Path, exc: Exception) -> CaseError:
    return CaseError(f"{display_path(path)}: not a minorage case database, or damaged ({exc}); keep it as it is for "
                     "examination and scan into a new case folder")


def _checked(db: sqlite3.Connection, path: Path) -> sqlite3.Connection:
    """The database, once SQLite has read it whole and it is a case of this schema (or new)."""
    check = db.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise sqlite3.DatabaseError(check)
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "files" in tables and case_info(db).get("schema") != SCHEMA_VERSION:
        raise CaseError(f"{display_path(path)}: made by an older minorage (schema {case_info(db).get('schema', '1')}); "
                        f"this one reads and writes schema {SCHEMA_VERSION}: scan into a new case folder")
    return db


def open_case(case_dir: Path) -> sqlite3.Connection:
    """The case's database for writing (created if new), checked whole before it is used."""
    path = Path(case_dir) / CASE_FILE
    try:
        db = _checked(sqlite3.connect(path), path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
    except sqlite3.DatabaseError as exc:
        raise _damaged(path, exc) from exc
    return db


def connect_read_only(case_dir: Path) -> sqlite3.Connection:
    """The case's database opened read-only (a report never changes a case), checked whole."""
    path = Path(case_dir) / CASE_FILE
    if not path.is_file():
        raise CaseError(f"{display_path(case_dir)}: no {CASE_FILE} here; run `minorage scan SOURCE --out {display_path(case_dir)}` first")
    try:
        db = _checked(sqlite3.connect(f"file:{path}?mode=ro", uri=True), path)
        if case_info(db).get("schema") != SCHEMA_VERSION:
            raise sqlite3.DatabaseError("no case tables")
    except sqlite3.DatabaseError as exc:
        raise _damaged(path, exc) from exc
    db.row_factory = sqlite3.Row
    return db


def open_for_review(case_dir: Path) -> sqlite3.Connection:
    """The case's database for recording reviews (the review app's only writes), without the
    whole-file check `connect_read_only` made when the app started: one per request stays cheap."""
    db = sqlite3.connect(Path(case_dir) / CASE_FILE, timeout=10)
    db.row_factory = sqlite3.Row
    return db


def case_info(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT key, value FROM case_info"))


def has_second_opinions(db: sqlite3.Connection) -> bool:
    """Whether the case can hold a second opinion's ages (a case of minorage before 0.6 cannot)."""
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'second_opinions'").fetchone() is not None


@contextmanager
def writing(db: sqlite3.Connection, what: str) -> Iterator[sqlite3.Connection]:
    """A transaction whose failure (full disk, I/O error) is a `CaseError` naming the case."""
    try:
        with db:
            yield db
    except sqlite3.Error as exc:
        raise CaseError(f"{_path_of(db)}: cannot write {what} ({exc}: the disk may be full); every file committed "
                        "before it is whole in the case; free space and run the same command to resume") from exc


def _path_of(db: sqlite3.Connection) -> str:
    try:
        return display_path(db.execute("PRAGMA database_list").fetchone()[2])
    except sqlite3.Error:
        return CASE_FILE


def begin_run(db: sqlite3.Connection, settings: dict, roots: list[str], version: str) -> int:
    """Record the settings of a new case, or refuse a resume whose settings differ; open a run."""
    known = case_info(db)
    if "settings" in known:
        differences = _differences(json.loads(known["settings"]), settings)
        if differences:
            raise CaseError("this case was scanned with other settings: " + "; ".join(differences) +
                            ". Resume it with the case's settings, or start a new case folder")
    sources = sorted(set(json.loads(known.get("sources", "[]"))) | set(roots))
    with writing(db, "the case's settings"):
        db.executemany("INSERT OR IGNORE INTO case_info VALUES (?, ?)", [
            ("schema", SCHEMA_VERSION), ("settings", json.dumps(settings, sort_keys=True)), ("started", now()),
            ("minorage_version", version), ("model", str(settings["model"])), ("model_sha256", str(settings["model_sha256"])),
            ("minor_below", str(settings["minor_below"])), ("flag_rule", flag_rule(settings["minor_below"], settings.get("minor_above"))),
        ])
        db.execute("INSERT OR REPLACE INTO case_info VALUES ('sources', ?)", (json.dumps(sources),))
        cursor = db.execute("INSERT INTO runs (started, sources, minorage_version) VALUES (?, ?, ?)", (now(), json.dumps(roots), version))
    return cursor.lastrowid


#: Settings added after a case's schema was fixed, with the value every earlier scan used.
SETTINGS_BEFORE_RECORDED = {"yunet_threshold": 0.5}


def _differences(case: dict, run: dict) -> list[str]:
    case = {**SETTINGS_BEFORE_RECORDED, **case}
    out = []
    for key in sorted(set(case) | set(run)):
        if case.get(key) != run.get(key):
            was = _shown(case[key]) if key in case else "not recorded (an earlier version's)"
            out.append(f"{SETTING_OPTIONS.get(key, key)} {was} (this run: {_shown(run.get(key))})")
    return out


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def end_run(db: sqlite3.Connection, run_id: int, scanned: int, atime_kept: bool, outcome: str) -> None:
    """Close a run's record; the case's `atime_preserved` is yes only while every run's was."""
    kept = "yes" if atime_kept else "no"
    with writing(db, "the run's record"):
        db.execute("UPDATE runs SET ended = ?, scanned = ?, atime_preserved = ?, outcome = ? WHERE id = ?",
                   (now(), scanned, kept, outcome, run_id))
        every = db.execute("SELECT COUNT(*) = SUM(atime_preserved = 'yes') FROM runs WHERE ended IS NOT NULL").fetchone()[0]
        db.execute("INSERT OR REPLACE INTO case_info VALUES ('atime_preserved', ?)", ("yes" if every else "no",))


def known_path(db: sqlite3.Connection, path: str) -> bool:
    return db.execute("SELECT 1 FROM files WHERE path_bytes = ?", (os.fsencode(path),)).fetchone() is not None


def insert_file(db: sqlite3.Connection, row: dict, faces: list[tuple], run_id: int,
                opinions: list[tuple[float, bool] | None] | None = None) -> bool:
    """One file and all its faces (with each face's second opinion, where `opinions` gives one),
    in one transaction; False if the file was already there (named twice by overlapping
    sources: kept once)."""
    with writing(db, f"the file {display_path(row['path'])}"):
        cursor = db.execute(
            "INSERT OR IGNORE INTO files (path, path_bytes, size, sha256, sha1, md5, media, status, error, link_target, frames, faces, "
            "scanned_at, run_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (display_path(row["path"]), os.fsencode(row["path"]), row.get("size"), row.get("sha256"), row.get("sha1"), row.get("md5"), row["media"],
             row["status"], row.get("error"), row.get("link_target"), row.get("frames"), len(faces), now(), run_id),
        )
        if cursor.rowcount == 0:
            return False
        file_id = cursor.lastrowid
        for face, opinion in zip(faces, opinions or [None] * len(faces)):
            face_id = db.execute("INSERT INTO faces (file_id, face, frame_time, x1, y1, x2, y2, left_eye_x, left_eye_y, right_eye_x, "
                                 "right_eye_y, score, age, age_group, minor, p_minor, age_low, age_high, eyes_occluded, thumbnail) "
                                 "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (file_id, *face)).lastrowid
            if opinion is not None:
                db.execute("INSERT INTO second_opinions (face_id, age, flag_lifted) VALUES (?, ?, ?)", (face_id, opinion[0], int(opinion[1])))
    return True


#: What an examiner can say of a face, and the key that says it in `minorage review`.
DECISIONS = {"minor": "minor", "adult": "adult", "not_face": "not a face", "unsure": "unsure"}


def add_review(db: sqlite3.Connection, face_id: int, decision: str, note: str | None, reviewer: str) -> dict:
    """Record one decision on a face (appended; an earlier one stays in the table) and return it."""
    if decision not in DECISIONS:
        raise ValueError(f"unknown decision {decision!r}; one of {', '.join(DECISIONS)}")
    at = now()
    with writing(db, "the review"):
        if db.execute("SELECT 1 FROM faces WHERE id = ?", (face_id,)).fetchone() is None:
            raise KeyError(face_id)
        db.execute("INSERT INTO reviews (face_id, decision, note, reviewer, at) VALUES (?, ?, ?, ?, ?)",
                   (face_id, decision, note or None, reviewer, at))
    return {"face_id": face_id, "decision": decision, "note": note or None, "reviewer": reviewer, "at": at}


def review_progress(db: sqlite3.Connection) -> tuple[int, int]:
    """(faces reviewed, faces in the case)."""
    return (db.execute("SELECT COUNT(DISTINCT face_id) FROM reviews").fetchone()[0], db.execute("SELECT COUNT(*) FROM faces").fetchone()[0])


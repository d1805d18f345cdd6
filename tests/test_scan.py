"""`minorage scan` and `minorage report` on real faces mixed with every kind of bad input."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from minorage import AgeEstimator
from minorage.cli import main

from .conftest import CHROMIUM_FLAGS, scan_in_background, wait_for_files

EXPECTED = {  # relative path -> status
    "faces/a.jpg": "ok", "faces/deeper/b.jpg": "ok", "faces/c.png": "ok",
    "kinds/cmyk.jpg": "ok", "kinds/sixteen_bit.png": "ok", "kinds/gray.png": "ok", "kinds/alpha.png": "ok",
    "kinds/rotated_exif.jpg": "ok", "kinds/animated.gif": "ok", "kinds/renamed_photo.dat": "ok", "video/clip.avi": "ok",
    "bad/truncated.jpg": "corrupt", "bad/empty.jpg": "empty", "bad/text.png": "not_image", "bad/bomb.png": "too_large",
    "bad/broken.mp4": "corrupt", "bad/notes.txt": "not_media", "bad/flat.png": "no_face",
    "links/loop_a.jpg": "link_broken", "links/loop_b.jpg": "link_broken", "links/up": "link",
    "bad/pipe.jpg": "not_regular",
    ".": "folder", "faces": "folder", "faces/deeper": "folder", "kinds": "folder", "video": "folder", "bad": "folder", "links": "folder",
}


def _face_photos(utkface_files) -> list[Path]:
    """Clear single-face photos of children and adults."""
    return [utkface_files[i] for i in (40, 900, 2500, 5200, 7000)]


@pytest.fixture(scope="module")
def evidence(tmp_path_factory, utkface_files) -> tuple[Path, dict[str, str]]:
    """A folder mixing real faces and every bad input the issue lists; returns it with the
    SHA-256 of every regular file, to prove nothing was changed."""
    root = tmp_path_factory.mktemp("evidence")
    photos = _face_photos(utkface_files)
    for sub in ("faces/deeper", "kinds", "video", "bad", "links"):
        (root / sub).mkdir(parents=True)
    shutil.copy(photos[0], root / "faces/a.jpg")
    shutil.copy(photos[1], root / "faces/deeper/b.jpg")
    face = cv2.imread(str(photos[2]))
    cv2.imwrite(str(root / "faces/c.png"), face)
    pil = Image.open(photos[3]).convert("RGB")
    pil.convert("CMYK").save(root / "kinds/cmyk.jpg")
    cv2.imwrite(str(root / "kinds/sixteen_bit.png"), face.astype(np.uint16) * 257)
    cv2.imwrite(str(root / "kinds/gray.png"), cv2.cvtColor(face, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(root / "kinds/alpha.png"), cv2.cvtColor(face, cv2.COLOR_BGR2BGRA))
    # stored on its side, with the EXIF orientation that turns it upright (6: rotate 90 clockwise)
    exif = Image.Exif()
    exif[0x0112] = 6
    pil.transpose(Image.Transpose.ROTATE_90).save(root / "kinds/rotated_exif.jpg", exif=exif)
    Image.open(photos[4]).convert("RGB").save(root / "kinds/animated.gif", save_all=True,
                                                 append_images=[Image.new("RGB", (200, 200), "white")], duration=100)
    shutil.copy(photos[4], root / "kinds/renamed_photo.dat")
    writer = cv2.VideoWriter(str(root / "video/clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (200, 200))
    for i in range(15):  # 3 s at 5 fps: a face from 0 s, a blank at 1 s, another face at 2 s
        writer.write(cv2.imread(str(photos[0])) if i < 5 else np.full((200, 200, 3), 90, np.uint8) if i < 10 else face)
    writer.release()
    data = photos[1].read_bytes()
    (root / "bad/truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "bad/empty.jpg").write_bytes(b"")
    (root / "bad/text.png").write_text("not an image at all\n")
    Image.new("1", (12_000, 12_000)).save(root / "bad/bomb.png")  # 144 Mpx, a few kB on disk
    (root / "bad/broken.mp4").write_bytes(os.urandom(4096))
    (root / "bad/notes.txt").write_text("case notes\n")
    cv2.imwrite(str(root / "bad/flat.png"), np.full((300, 300, 3), 128, np.uint8))
    os.symlink("loop_b.jpg", root / "links/loop_a.jpg")
    os.symlink("loop_a.jpg", root / "links/loop_b.jpg")
    os.symlink("..", root / "links/up")
    os.mkfifo(root / "bad/pipe.jpg")  # opening it would wait forever for a writer
    cv2.imwrite(str(root / "bad/locked.png"), np.full((300, 300, 3), 60, np.uint8))
    os.chmod(root / "bad/locked.png", 0)  # unreadable, except to root (who reads anything)
    return root, _fingerprints(root)


def _fingerprints(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_mode, hashlib.sha256(p.read_bytes()).hexdigest() if os.access(p, os.R_OK) else "")
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _db(case: Path) -> sqlite3.Connection:
    return sqlite3.connect(case / "case.sqlite")


def test_scan_gives_every_file_its_status_and_touches_nothing(evidence, tmp_path):
    root, before = evidence
    case = tmp_path / "case"
    assert main(["scan", str(root), "--out", str(case), "--workers", "2"]) == 0
    db = _db(case)
    status = {str(Path(p).relative_to(root)): s for p, s in db.execute("SELECT path, status FROM files")}
    locked = "no_face" if os.access(root / "bad/locked.png", os.R_OK) else "unreadable"
    assert status == {**EXPECTED, "bad/locked.png": locked}
    assert _fingerprints(root) == before  # evidence untouched
    errors = dict(db.execute("SELECT path, error FROM files WHERE status NOT IN ('ok', 'folder')"))
    assert all(errors.values()) and "pixels is above the limit" in errors[str(root / "bad/bomb.png")]
    sha, sha1, md5, size = db.execute("SELECT sha256, sha1, md5, size FROM files WHERE path = ?", (str(root / "faces/a.jpg"),)).fetchone()
    data = (root / "faces/a.jpg").read_bytes()
    assert (sha, md5, size) == (hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest(), len(data))
    for tool, value in (("sha1sum", sha1), ("md5sum", md5), ("sha256sum", sha)):  # as the tools other suites use
        assert subprocess.run([tool, str(root / "faces/a.jpg")], capture_output=True, text=True).stdout.split()[0] == value

    faces = {str(Path(p).relative_to(root)): rows for p, rows in
             db.execute("SELECT path, COUNT(*) FROM faces JOIN files ON files.id = file_id GROUP BY path")}
    assert all(faces.get(p, 0) >= 1 for p, s in EXPECTED.items() if s == "ok")
    # the EXIF orientation is honoured: the face is found upright in the turned image
    (x1, y1, x2, y2, lx, ly, rx, ry), = db.execute(
        "SELECT x1, y1, x2, y2, left_eye_x, left_eye_y, right_eye_x, right_eye_y FROM faces JOIN files ON files.id = file_id WHERE path LIKE '%rotated_exif.jpg'")
    assert abs(ly - ry) < 0.15 * (x2 - x1) and ly < (y1 + y2) / 2
    # the video: faces at 0 s and 2 s, none in the blank second
    times = sorted(t for (t,) in db.execute("SELECT frame_time FROM faces JOIN files ON files.id = file_id WHERE path LIKE '%clip.avi'"))
    assert times == [0.0, 2.0]
    assert db.execute("SELECT frames FROM files WHERE path LIKE '%clip.avi'").fetchone() == (3,)
    # ages are plausible, the minor flag follows them and the model's threshold, a thumbnail is kept
    info = dict(db.execute("SELECT key, value FROM case_info"))
    assert info["model"] and len(info["model_sha256"]) == 64
    for age, minor, p_minor, thumb in db.execute("SELECT age, minor, p_minor, thumbnail FROM faces"):
        assert 0 <= age <= 31 and minor == int(age < float(info["minor_below"])) and thumb[:2] == b"\xff\xd8" and 0 <= p_minor <= 1


@pytest.mark.slow
def test_a_barred_face_is_marked(tmp_path, utkface_files):
    from minorage.faces.detection import FaceDetector, main_face
    from minorage.faces.occlusion import occlude

    folder = tmp_path / "in"
    folder.mkdir()
    image = cv2.imread(str(_face_photos(utkface_files)[0]))
    barred, _ = occlude(image, main_face(FaceDetector().detect(image), image.shape))
    cv2.imwrite(str(folder / "plain.png"), image)
    cv2.imwrite(str(folder / "barred.png"), barred)
    assert main(["scan", str(folder), "--out", str(tmp_path / "case"), "--workers", "1"]) == 0
    marks = dict(_db(tmp_path / "case").execute("SELECT path, eyes_occluded FROM faces JOIN files ON files.id = file_id"))
    assert marks == {str(folder / "plain.png"): 0, str(folder / "barred.png"): 1}


@pytest.mark.slow
def test_killed_scan_resumes_without_duplicates_or_losses(tmp_path, utkface_files):
    folder = tmp_path / "many"
    folder.mkdir()
    for path in utkface_files[::150][:60]:
        shutil.copy(path, folder / path.name)
    case = tmp_path / "case"
    process = scan_in_background(folder, case, workers=1)
    wait_for_files(case, 10, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    first = dict(_db(case).execute("SELECT path, scanned_at FROM files WHERE media != 'folder'"))
    assert 10 <= len(first) < 60
    faces_first = _db(case).execute("SELECT COUNT(*) FROM faces").fetchone()[0]

    assert main(["scan", str(folder), "--out", str(case), "--workers", "1"]) == 0
    db = _db(case)
    files = db.execute("SELECT path, COUNT(*) FROM files WHERE media != 'folder' GROUP BY path").fetchall()
    assert len(files) == 60 and all(n == 1 for _, n in files)
    again = dict(db.execute("SELECT path, scanned_at FROM files"))
    assert all(again[p] == t for p, t in first.items())  # finished files were not redone
    per_file = dict(db.execute("SELECT path, faces FROM files"))
    stored = dict(db.execute("SELECT path, COUNT(*) FROM faces JOIN files ON files.id = file_id GROUP BY path"))
    assert all(stored.get(p, 0) == n for p, n in per_file.items())  # each file whole: all its faces, once
    assert db.execute("SELECT COUNT(*) FROM faces").fetchone()[0] >= faces_first


@pytest.mark.slow
def test_resuming_with_another_model_is_refused(tmp_path, utkface_files, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(_face_photos(utkface_files)[0], folder / "a.jpg")
    assert main(["scan", str(folder), "--out", str(tmp_path / "case"), "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["scan", str(folder), "--out", str(tmp_path / "case"), "--workers", "1", "--model", "imdb"]) == 2
    default = AgeEstimator.from_pretrained()
    assert f"--model {default.card.name}" in (err := capsys.readouterr().err) and "(this run: imdb)" in err and "--model (its calibration)" in err
    # nor with another minor flag threshold: the case's flags would mean two things
    assert main(["scan", str(folder), "--out", str(tmp_path / "case"), "--workers", "1", "--minor-below", "18.5"]) == 2
    assert f"--minor-below {default.minor_below} (this run: 18.5)" in capsys.readouterr().err
    # one flag for every route and kind of face is another setting than the model's own per route, even at the same value
    assert main(["scan", str(folder), "--out", str(tmp_path / "case"), "--workers", "1", "--minor-below", str(default.minor_below)]) \
        == (2 if default.edge or default.card.minor_below_barred is not None else 0)
    assert main(["scan", str(folder), "--out", str(tmp_path / "case"), "--workers", "1"]) == 0


def test_report_formats(evidence, tmp_path):
    import csv
    import json

    root, _ = evidence
    case = tmp_path / "case"
    assert main(["scan", str(root / "faces"), str(root / "bad"), "--out", str(case), "--workers", "2"]) == 0
    for fmt in ("csv", "json", "html"):
        assert main(["report", str(case), "--format", fmt]) == 0
    rows = list(csv.DictReader(io.StringIO((case / "report.csv").read_text())))
    ages = [float(r["age"]) for r in rows]
    assert len(rows) == 3 and ages == sorted(ages) and all(r["sha256"] for r in rows)
    assert all(r["group"] and r["minor"] in ("0", "1") for r in rows)  # named as `predict` names them
    data = json.loads((case / "report.json").read_text())
    assert len(data["faces"]) == 3 and len(data["files"]) == 3 + 9 + 3 and data["case"]["model_sha256"]  # + 3 folders
    page = (case / "report.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 3 and "bomb.png" in page and "http" not in page.replace("http-equiv", "")


def test_vics_export_names_every_read_medium_by_its_md5_and_sha1(evidence, tmp_path):
    """`report --format vics`: an OData document of the ProjectVic data model with one Media per
    image or video the scan read (a copy found twice is one Media with two files), its MD5 and
    SHA-1 those of md5sum and sha1sum, every place it was found, the faces in its comments, a
    tag for a probable minor exactly where the case flagged one, and, with nothing reviewed, the
    category the flag gives (2 where a face is flagged, else none)."""
    import json

    root, _ = evidence
    copy = tmp_path / "more"
    copy.mkdir()
    shutil.copy(root / "faces/a.jpg", copy / "same_as_a.jpg")
    case = tmp_path / "case"
    assert main(["scan", str(root / "faces"), str(root / "bad"), str(copy), "--out", str(case), "--workers", "2"]) == 0
    assert main(["report", str(case), "--format", "vics"]) == 0
    feed = json.loads((case / "report.vics.json").read_text())
    assert "ProjectVic" in feed["@odata.context"] and feed["@odata.context"].endswith("#Media")
    db = _db(case)
    read = db.execute("SELECT path FROM files WHERE media IN ('image', 'video') AND status IN ('ok', 'no_face')").fetchall()
    files = [str(Path(f["FilePath"]) / f["FileName"]) for m in feed["value"] for f in m["MediaFiles"]]
    assert sorted(files) == sorted(p for (p,) in read) and len(feed["value"]) == len(read) - 1  # a.jpg and its copy: one Media
    flagged = {p for (p,) in db.execute("SELECT DISTINCT path FROM files JOIN faces ON files.id = file_id WHERE minor = 1")}
    for media in feed["value"]:
        where = [str(Path(f["FilePath"]) / f["FileName"]) for f in media["MediaFiles"]]
        for tool, key in (("md5sum", "MD5"), ("sha1sum", "SHA1")):
            assert subprocess.run([tool, where[0]], capture_output=True, text=True).stdout.split()[0].upper() == media[key]
        flagged_here = any(w in flagged for w in where)  # nothing reviewed: the category is the flag's, tagged as such
        assert media["Category"] == (2 if flagged_here else None) and media["MediaSize"] == os.path.getsize(where[0])
        assert ("minorage: category from the flag (not reviewed)" in media["Tags"]) == flagged_here
        assert ("minorage: probable minor" in media["Tags"]) == any(w in flagged for w in where)
        assert media["Comments"].startswith("minorage ") and ("age " in media["Comments"] or "no face" in media["Comments"])
    assert len(next(m for m in feed["value"] if len(m["MediaFiles"]) == 2)["MediaFiles"]) == 2


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is installed by scripts/setup.sh where apt is available")
def test_html_report_shows_the_faces_in_headless_chromium(evidence, tmp_path):
    root, _ = evidence
    case = tmp_path / "case"
    assert main(["scan", str(root / "faces"), "--out", str(case), "--workers", "2"]) == 0
    assert main(["report", str(case), "--format", "html"]) == 0
    shot = tmp_path / "shot.png"
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(["chromium", *flags, "--dump-dom", (case / "report.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") == 3 and "probable minors" in dom
    subprocess.run(["chromium", *flags, f"--screenshot={shot}", "--window-size=1200,900", (case / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    screenshot = cv2.imread(str(shot))
    # the three thumbnails are drawn in the first column (72 px each, below the header): not white
    column = screenshot[260:520, 32:104]
    assert (column.min(axis=2) < 200).mean() > 0.6


@pytest.mark.slow
def test_overlapping_sources_store_each_file_once(tmp_path, utkface_files, capsys):
    folder = tmp_path / "in" / "sub"
    folder.mkdir(parents=True)
    for path in _face_photos(utkface_files)[:3]:
        shutil.copy(path, folder / path.name)
    case = tmp_path / "case"
    assert main(["scan", str(tmp_path / "in"), str(folder), str(folder / _face_photos(utkface_files)[0].name), "--out", str(case), "--workers", "2"]) == 0
    db = _db(case)
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT path) FROM files WHERE media = 'image'").fetchone() == (3, 3)
    assert db.execute("SELECT COUNT(*) FROM files WHERE media = 'folder'").fetchone()[0] == 2
    assert db.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 3
    assert "5 scanned" in capsys.readouterr().err  # the summary counts each file and folder once


def test_a_case_of_an_older_schema_is_refused_by_name(tmp_path, capsys):
    """A case whose intervals mean something else (schema 4: a top of 25 was "25 or older") is
    neither read nor written, and the message says what to do."""
    from minorage.triage.case import CASE_FILE, open_case

    db = open_case(tmp_path)
    with db:
        db.execute("INSERT OR REPLACE INTO case_info VALUES ('schema', '4')")
    db.close()
    before = hashlib.sha256((tmp_path / CASE_FILE).read_bytes()).hexdigest()
    for command in (["report", str(tmp_path)], ["review", str(tmp_path), "--port", "0"]):
        assert main(command) != 0
        assert "made by an older minorage (schema 4)" in capsys.readouterr().err
    assert hashlib.sha256((tmp_path / CASE_FILE).read_bytes()).hexdigest() == before

"""Hostile evidence: every way a seized collection can hang, exhaust, block or alter a run, on
real files. Each test names the defect it guards against."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from minorage.cli import main
from minorage.config import DetectorConfig
from minorage.faces.detection import tuned_pair_digest

from .conftest import scan_in_background, wait_for_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def face(utkface_files) -> Path:
    """One clear face of a child (found by every detector setting used here)."""
    return utkface_files[900]


def _rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _files(case: Path) -> dict[bytes, tuple]:
    db = sqlite3.connect(case / "case.sqlite")
    return {row[0]: row[1:] for row in db.execute("SELECT path_bytes, path, status, error, link_target, faces, media FROM files")}


def _digest(path: Path) -> str:
    """SHA-256 of a file, read without changing its access time (the owner may: the tests made it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    with os.fdopen(fd, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _tree(root: Path) -> dict[str, tuple]:
    """Every entry below root with its inode, size, times and content hash: what 'untouched' means.
    (Listing the folders here may itself change their access times: the atime test checks apart.)"""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = _digest(path) if path.is_file() and not path.is_symlink() else None
        out[str(path.relative_to(root))] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_atime_ns, digest)
    return out


# --- 1: --annotate never replaces evidence; same names from two folders stay two files -----------


def test_annotate_into_the_evidence_is_refused_and_names_never_collide(tmp_path, face, capsys):
    ev = tmp_path / "ev"
    (ev / "a").mkdir(parents=True)
    (ev / "b").mkdir()
    shutil.copy(face, ev / "a" / "x.jpg")
    shutil.copy(face, ev / "b" / "x.jpg")
    before = _tree(ev)
    assert main(["predict", str(ev), "--annotate", str(ev)]) == 2
    assert "inside the source" in capsys.readouterr().err
    assert main(["predict", str(ev / "a"), "--annotate", str(ev / "a" / "out")]) == 2
    assert _tree(ev) == before
    out = tmp_path / "annotated"
    out.mkdir()
    (out / "x.jpg").write_bytes(b"an earlier file the analyst keeps")
    assert main(["predict", str(ev / "a" / "x.jpg"), str(ev / "b" / "x.jpg"), "--annotate", str(out)]) == 0
    rows = _rows(capsys.readouterr().out)
    written = sorted(Path(r["annotated"]).name for r in rows)
    assert written == ["x (2).jpg", "x (3).jpg"] and (out / "x.jpg").read_bytes() == b"an earlier file the analyst keeps"
    assert _tree(ev) == before


# --- 2: a name that is not UTF-8 ---------------------------------------------------------------


@pytest.mark.slow
def test_a_name_that_is_not_utf8_is_scanned_and_written(tmp_path, face, capsys):
    d = tmp_path / "d"
    d.mkdir()
    odd = os.path.join(os.fsencode(d), b"caf\xe9.jpg")
    shutil.copy(face, odd)
    shutil.copy(face, d / "plain.jpg")
    case = tmp_path / "case"
    for _ in range(2):  # the second run resumes and finishes too
        assert main(["scan", str(d), "--out", str(case), "--workers", "1"]) == 0
    files = _files(case)
    assert files[odd][0].endswith("caf\\xe9.jpg") and files[odd][1] == "ok" and files[odd][4] == 1
    capsys.readouterr()
    assert main(["predict", str(d), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sorted(r["path"].rsplit("/", 1)[1] for r in rows) == ["caf\\xe9.jpg", "plain.jpg"] and all(r["status"] == "ok" for r in rows)


# --- 3: a worker that dies ---------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    return [int(p) for t in Path(f"/proc/{pid}/task").iterdir() for p in (t / "children").read_text().split()]


def _workers(pid: int) -> list[int]:
    """The scan's worker processes: the children of its fork server."""
    servers = [c for c in _children(pid) if b"forkserver" in Path(f"/proc/{c}/cmdline").read_bytes()]
    return [w for server in servers for w in _children(server)]


@pytest.mark.slow
def test_a_killed_worker_costs_nothing_and_the_scan_ends(tmp_path, utkface_files):
    folder = tmp_path / "many"
    folder.mkdir()
    for path in utkface_files[::211][:80]:
        shutil.copy(path, folder / path.name)
    case = tmp_path / "case"
    process = scan_in_background(folder, case, workers=2, stderr=subprocess.PIPE)
    killed = None
    if wait_for_files(case, 5, process) and (workers := _workers(process.pid)):
        os.kill(workers[0], signal.SIGKILL)
        killed = workers[0]
    assert killed, "the scan ended before a worker could be killed"
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    files = _files(case)
    images = [f for f in files.values() if f[5] == "image"]
    assert len(images) == 80 and {f[1] for f in images} <= {"ok", "no_face"}  # the lost worker's files were retried
    assert b"1 worker processes replaced" in err


def crash_on_poison(item: str) -> str:
    """A task that kills its own worker on one item, as a decoder that segfaults would."""
    if item == "poison":
        os.kill(os.getpid(), signal.SIGSEGV)
    if item == "slow":
        time.sleep(60)
    return item.upper()


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_file_that_kills_every_worker_is_recorded_and_the_rest_finish(start_method):
    """Workers forked from the fork server, as on Linux, or spawned, as where there is none."""
    from minorage.triage.workers import Failed, Supervisor

    pool = Supervisor(2, int, (), crash_on_poison, in_flight=3, timeout=5, start_method=start_method)
    items = [f"f{i}" for i in range(12)]
    results = dict(pool.imap([*items[:4], "poison", *items[4:8], "slow", *items[8:]]))
    assert {k: results[k] for k in items} == {k: k.upper() for k in items}
    assert results["poison"] == Failed("worker_died", "the worker process reading this file stopped (in 2 workers): signal 11 (SIGSEGV)")
    assert results["slow"].status == "timeout" and pool.replaced == 3


# --- 4, 5, 6: memory and blocking, whatever a file claims ----------------------------------------


def _radiance_hdr(path: Path, side: int) -> None:
    """A run-length encoded Radiance HDR image of side x side pixels (a few bytes per row)."""
    runs, rest = divmod(side, 127)
    component = bytes([255, 128]) * runs + (bytes([128 + rest, 128]) if rest else b"")
    row = bytes([2, 2, side >> 8, side & 255]) + component * 4
    path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + f"-Y {side} +X {side}\n".encode() + row * side)


#: Runs a command and prints its peak resident kB last on stderr. Why a small process between:
#: a child's peak as Linux counts it includes the memory of the process it was started from, so
#: one started straight from the test runner would report the runner's size.
_PEAK_OF_ONE_RUN = ("import os, subprocess, sys; run = subprocess.Popen(sys.argv[1:]); _, status, usage = os.wait4(run.pid, 0); "
                    "print(usage.ru_maxrss, file=sys.stderr); sys.exit(os.waitstatus_to_exitcode(status))")


@pytest.mark.slow
def test_bombs_and_endless_files_are_refused_unread(tmp_path, face, capsys):
    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(face, d / "good.jpg")
    _radiance_hdr(d / "x.jpg", 12_000)  # 144 Mpx that OpenCV would decode: 6.9 GB
    with open(d / "z.jpg", "wb") as f:
        f.truncate(2 << 30)  # 2 GiB of nothing, sparse
    os.mkfifo(d / "b.jpg")
    (d / "zero.jpg").symlink_to("/dev/zero")
    done = subprocess.run([sys.executable, "-c", _PEAK_OF_ONE_RUN, sys.executable, "-m", "minorage", "predict", str(d), "--follow-links"],
                          capture_output=True, text=True, timeout=300)
    status = {Path(r["path"]).name: r["status"] for r in _rows(done.stdout)}
    assert status == {"good.jpg": "ok", "x.jpg": "not_image", "z.jpg": "too_large", "b.jpg": "not_regular",
                      "zero.jpg": "link", "zero": "not_regular"}
    assert done.returncode == 0 and int(done.stderr.split()[-1]) < 3_000_000  # peak kB: nothing was read whole
    case = tmp_path / "case"
    assert main(["scan", str(d), "--out", str(case), "--workers", "1", "--follow-links"]) == 0
    by_name = {Path(v[0]).name: v[1] for v in _files(case).values()}
    assert {k: by_name[k] for k in status} == status


def test_the_byte_limit_is_an_option(tmp_path, face, capsys):
    assert main(["predict", str(face), "--max-bytes", "1000"]) == 1  # nothing could be read
    (row,) = _rows(capsys.readouterr().out)
    assert row["status"] == "too_large" and "--max-bytes" in row["error"]


# --- 7, 10: links, inside and outside the sources ----------------------------------------------


@pytest.mark.slow
def test_links_are_recorded_with_their_targets_and_outside_ones_not_read(tmp_path, face, utkface_files):
    ev, elsewhere = tmp_path / "ev", tmp_path / "elsewhere"
    (ev / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(face, ev / "sub" / "in.jpg")
    shutil.copy(utkface_files[2500], elsewhere / "p.jpg")
    (ev / "x.jpg").symlink_to(elsewhere / "p.jpg")
    (ev / "again.jpg").symlink_to(ev / "sub" / "in.jpg")
    (ev / "out").symlink_to(elsewhere)
    case = tmp_path / "case"
    assert main(["scan", str(ev), "--out", str(case), "--workers", "1"]) == 0
    files = {Path(v[0]).name: v for v in _files(case).values()}
    assert files["x.jpg"][1:4] == ("link_not_followed", files["x.jpg"][2], str(elsewhere / "p.jpg")) and files["x.jpg"][4] == 0
    assert "outside the sources" in files["x.jpg"][2] and "p.jpg" not in files
    assert files["again.jpg"][1] == "link" and files["in.jpg"][1] == "ok" and files["out"][1] == "link_not_followed"
    followed = tmp_path / "followed"
    assert main(["scan", str(ev), "--out", str(followed), "--workers", "1", "--follow-links"]) == 0
    files = {Path(v[0]).name: v for v in _files(followed).values()}
    assert files["x.jpg"][1] == "link" and files["p.jpg"][1] == "ok" and files["p.jpg"][0] == str(elsewhere / "p.jpg")
    # the same evidence through a linked folder is the same evidence: a resume adds nothing
    (tmp_path / "evlink").symlink_to(ev)
    count = len(_files(case))
    assert main(["scan", str(tmp_path / "evlink"), "--out", str(case), "--workers", "1"]) == 0
    assert len(_files(case)) == count


# --- 8: a folder that cannot be listed ---------------------------------------------------------


@pytest.mark.slow
def test_a_folder_that_cannot_be_listed_has_its_row(tmp_path, face):
    ev = tmp_path / "ev"
    (ev / "sub").mkdir(parents=True)
    shutil.copy(face, ev / "a.jpg")
    shutil.copy(face, ev / "sub" / "b.jpg")
    os.chmod(ev / "sub", 0)
    case = tmp_path / "case"
    command = [sys.executable, "-m", "minorage", "scan", str(ev), "--out", str(case), "--workers", "1"]
    if os.geteuid() == 0:  # root lists anything: take the capabilities away, as for an analyst's account
        if not shutil.which("capsh"):
            pytest.skip("running as root without capsh to drop CAP_DAC_READ_SEARCH")
        command = ["capsh", "--drop=cap_dac_read_search,cap_dac_override", "--", "-c", " ".join(map(str, command))]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=300)
    finally:
        os.chmod(ev / "sub", 0o755)
    files = {Path(v[0]).name: v for v in _files(case).values()}
    assert files["sub"][1] == "unreadable" and "cannot be listed" in files["sub"][2] and files["a.jpg"][1] == "ok"


# --- 9: a resume with other settings -----------------------------------------------------------


@pytest.mark.slow
def test_a_resume_with_other_settings_is_refused_naming_each(tmp_path, face, capsys):
    """Each setting that changes results refuses a resume and is named; a case from before a
    setting was recorded resumes with the value every earlier scan used."""
    ev = tmp_path / "ev"
    ev.mkdir()
    shutil.copy(face, ev / "a.jpg")
    case = tmp_path / "case"
    assert main(["scan", str(ev), "--out", str(case), "--workers", "1"]) == 0
    capsys.readouterr()
    for option, value, said in (("--detector", "stock", "--detector union+yunet (this run: stock)"),
                                ("--min-face-size", "150", "--min-face-size 32 (this run: 150)"),
                                ("--max-pixels", "1000000", "--max-pixels 100000000 (this run: 1000000)"),
                                ("--max-bytes", "1000000", "(this run: 1000000)"),
                                ("--video-every", "2", "--video-every 1.0 (this run: 2.0)"),
                                ("--yunet-threshold", "0.3", "--yunet-threshold 0.5 (this run: 0.3)"),
                                ("--pyramid-factor", "0.709", "--pyramid-factor 0.842 (this run: 0.709)")):
        assert main(["scan", str(ev), "--out", str(case), "--workers", "1", option, value]) == 2
        assert said in capsys.readouterr().err
    for recorded, said in (("0123456789abcdef", "--detector (its eye-bar-tuned R/O-Net weights) 0123456789abcdef (this run: "),
                           (None, "--detector (its eye-bar-tuned R/O-Net weights) not recorded (an earlier version's) (this run: ")):
        _recorded_setting(case, "tuned_pair", recorded)  # as a case scanned with another pair, or before the pair was recorded
        assert main(["scan", str(ev), "--out", str(case), "--workers", "1"]) == 2
        assert said in capsys.readouterr().err
    _recorded_setting(case, "tuned_pair", tuned_pair_digest(DetectorConfig()))
    _recorded_setting(case, "yunet_threshold", None)  # as a case scanned before YuNet's threshold was recorded
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(face, other / "b.jpg")
    assert main(["scan", str(other), "--out", str(case), "--workers", "1"]) == 0
    db = sqlite3.connect(case / "case.sqlite")
    runs = [json.loads(s) for (s,) in db.execute("SELECT sources FROM runs WHERE outcome = 'finished' ORDER BY id")]
    assert runs == [[str(ev)], [str(other)]]
    assert json.loads(dict(db.execute("SELECT key, value FROM case_info"))["sources"]) == sorted([str(ev), str(other)])


def _recorded_setting(case, key: str, value) -> None:
    """Set (or, with None, remove) one setting a case recorded."""
    with sqlite3.connect(case / "case.sqlite") as db:
        settings = json.loads(dict(db.execute("SELECT key, value FROM case_info"))["settings"])
        settings.pop(key, None)
        settings.update({key: value} if value is not None else {})
        db.execute("UPDATE case_info SET value = ? WHERE key = 'settings'", (json.dumps(settings),))
    db.close()


# --- 11: access times --------------------------------------------------------------------------


@pytest.mark.slow
def test_access_times_are_kept(tmp_path, face):
    ev = tmp_path / "ev"
    (ev / "sub").mkdir(parents=True)
    shutil.copy(face, ev / "sub" / "a.jpg")
    image = cv2.imread(str(face))
    writer = cv2.VideoWriter(str(ev / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, image.shape[1::-1])
    for _ in range(10):
        writer.write(image)
    writer.release()
    (ev / "notes.txt").write_text("listed, hashed")
    paths = [ev, *ev.rglob("*")]
    old = 978_307_200_000_000_000  # 2001-01-01: older than any mtime, so relatime would update it
    for path in paths:
        os.utime(path, ns=(old, path.stat().st_mtime_ns))
    case = tmp_path / "case"
    assert main(["scan", str(ev), "--out", str(case), "--workers", "1"]) == 0
    assert main(["predict", str(ev)]) == 0
    assert {str(p): p.stat().st_atime_ns for p in paths} == {str(p): old for p in paths}
    db = sqlite3.connect(case / "case.sqlite")
    assert dict(db.execute("SELECT key, value FROM case_info"))["atime_preserved"] == "yes"
    assert db.execute("SELECT faces FROM files WHERE path LIKE '%clip.avi'").fetchone()[0] >= 1


# --- 12: damaged cases, full disks, failed reports --------------------------------------------


@pytest.mark.slow
def test_damaged_cases_full_disks_and_failed_reports_say_so(tmp_path, face, capsys):
    ev = tmp_path / "ev"
    ev.mkdir()
    for i in range(40):
        shutil.copy(face, ev / f"{i:02d}.jpg")
        with open(ev / f"{i:02d}.jpg", "ab") as f:
            f.write(bytes([i]))  # 40 files, 40 hashes
    good = tmp_path / "good"
    assert main(["scan", str(ev), "--out", str(good), "--workers", "1"]) == 0
    assert main(["report", str(good)]) == 0
    page = (good / "report.html").read_bytes()
    for damage in ("truncated", "garbage"):
        bad = tmp_path / damage
        bad.mkdir()
        data = (good / "case.sqlite").read_bytes()
        (bad / "case.sqlite").write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
        (bad / "report.html").write_bytes(page)
        capsys.readouterr()
        assert main(["report", str(bad)]) == 2
        err = capsys.readouterr().err
        assert "case.sqlite: not a minorage case database, or damaged" in err and "Traceback" not in err
        assert (bad / "report.html").read_bytes() == page  # the earlier report is kept whole
        assert main(["scan", str(ev), "--out", str(bad), "--workers", "1"]) == 2
    assert main(["report", str(good), "-o", "/dev/full"]) == 2
    assert "No space left" in capsys.readouterr().err
    # a disk that fills during a scan: a clear message, and the case holds whole files only
    full = tmp_path / "full"
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000)); "
              "from minorage.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, "scan", str(ev), "--out", str(full), "--workers", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "cannot write" in done.stderr and "Traceback" not in done.stderr, done.stderr
    db = sqlite3.connect(full / "case.sqlite")
    stored = dict(db.execute("SELECT path, faces FROM files WHERE media = 'image'"))
    counted = dict(db.execute("SELECT path, COUNT(*) FROM faces JOIN files ON files.id = file_id GROUP BY path"))
    assert 0 < len(stored) < 40 and all(counted.get(p, 0) == n for p, n in stored.items())


# --- 13: names that attack spreadsheets and terminals -----------------------------------------


@pytest.mark.slow
def test_formula_and_escape_names_are_defused(tmp_path, face):
    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(face, d / '=HYPERLINK("http:evil","x").jpg')
    shutil.copy(face, d / "\x1b[31mred.jpg")
    (d / "\x1b]0;title\x07.png").write_bytes(b"not an image")
    done = subprocess.run([sys.executable, "-m", "minorage", "predict", ".", "--format", "csv"], cwd=d, capture_output=True, timeout=300)
    assert b"\x1b" not in done.stdout and b"\x1b" not in done.stderr
    cells = [r["path"] for r in csv.DictReader(io.StringIO(done.stdout.decode()))]
    assert all(not c.startswith(("=", "+", "-", "@")) for c in cells)
    assert any("\\x1b[31mred.jpg" in c for c in cells) and any(c.startswith("'=") or "/=HYPERLINK" in c for c in cells)
    rows = _rows(subprocess.run([sys.executable, "-m", "minorage", "predict", "."], cwd=d, capture_output=True, timeout=300).stdout.decode())
    assert {Path(r["path"]).name for r in rows} >= {'=HYPERLINK("http:evil","x").jpg', "\x1b[31mred.jpg"}  # JSON keeps them exact


# --- 14: HEIC/HEIF -----------------------------------------------------------------------------


@pytest.mark.slow
def test_heic_photos_are_images(tmp_path, face, capsys):
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()  # to write one; minorage registers its own reader

    d = tmp_path / "d"
    d.mkdir()
    Image.open(face).save(d / "iphone.heic", quality=90)
    assert main(["predict", str(d / "iphone.heic")]) == 0
    (named,) = _rows(capsys.readouterr().out)
    assert main(["predict", str(d)]) == 0
    (found,) = _rows(capsys.readouterr().out)
    assert named["status"] == found["status"] == "ok" and abs(named["age"] - found["age"]) < 1e-6
    case = tmp_path / "case"
    assert main(["scan", str(d), "--out", str(case), "--workers", "1"]) == 0
    (row,) = [v for v in _files(case).values() if v[0].endswith(".heic")]
    assert row[1] == "ok" and row[5] == "image" and row[4] == 1


# --- 15, 16: where a case may go, and what must exist -----------------------------------------


def test_cases_and_sources_are_checked_before_anything_is_written(tmp_path, face, capsys):
    ev = tmp_path / "ev"
    ev.mkdir()
    shutil.copy(face, ev / "a.jpg")
    before = _tree(ev)
    assert main(["scan", str(ev), "--out", str(ev / "case")]) == 2
    assert "inside the source" in capsys.readouterr().err and _tree(ev) == before
    assert main(["scan", str(tmp_path / "nonexistent"), "--out", str(tmp_path / "c1")]) == 2
    assert "nonexistent: no such file or folder" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["scan", str(ev), "--out", str(tmp_path / "afile")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty")]) == 1
    assert "no image or video file found" in capsys.readouterr().err
    assert main(["predict", str(ev), "-o", str(ev / "rows.jsonl")]) == 2 and _tree(ev) == before


# --- 17: a video whose header lies about its frame rate ---------------------------------------


def test_a_claimed_frame_rate_cannot_hide_frames(tmp_path, face, capsys):
    image = cv2.imread(str(face))
    path = tmp_path / "fast.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 2000, image.shape[1::-1])
    for i in range(60):  # the face only from frame 30 on: 15 ms into a "2000 fps" video
        writer.write(image if i >= 30 else np.full_like(image, 90))
    writer.release()
    assert main(["predict", str(path)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["ok"] and rows[0]["frame_time"] == pytest.approx(0.015, abs=0.001)


# --- 18: the package carries its weights -----------------------------------------------------


@pytest.mark.slow
def test_an_installed_package_detects_and_ages_without_the_repository(tmp_path, face):
    """The wheel, installed apart from the checkout (no ../shared, another folder), finds the face."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "wheel").glob("minorage-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k != "MINORAGE_SHARED"} | {"PYTHONPATH": str(site)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(face, elsewhere / "photo.jpg")
    done = subprocess.run([sys.executable, "-c", "import minorage.cli, sys; print(minorage.cli.__file__); sys.exit(minorage.cli.main(sys.argv[1:]))",
                           "predict", "photo.jpg"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    where, *rows = done.stdout.splitlines()
    assert where.startswith(str(site)) and [json.loads(r)["status"] for r in rows] == ["ok"]
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout

"""`minorage predict --crops` and `minorage info` on real UTKFace faces."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from minorage.cli import main

from .conftest import utkface_age


@pytest.fixture()
def mixed_folder(tmp_path, some_faces):
    """Eight real faces, a corrupt JPEG, a text file with a .png name, and a zero-byte .jpg."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for i, face in enumerate(some_faces[:8]):
        shutil.copy(face, folder / ("sub" if i % 2 else "") / face.name)
    (folder / "corrupt.jpg").write_bytes(some_faces[0].read_bytes()[:400])
    (folder / "notes.png").write_text("not an image at all")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    return folder


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def parse(fmt: str, text: str) -> list[dict]:
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines()]
    if fmt == "json":
        return json.loads(text)
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_predict_crops_every_format(capsys, mixed_folder, fmt):
    code, out, err = run_cli(capsys, "predict", "--crops", "--format", fmt, str(mixed_folder))
    assert code == 0
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in parse(fmt, out)}
    assert len(rows) == 11 and "readme.txt" not in rows
    ok = [r for name, r in rows.items() if name.endswith(".chip.jpg")]
    assert len(ok) == 8
    for row in ok:
        assert str(row["status"]) == "ok" and 0 < float(row["age"]) < 101
    assert rows["corrupt.jpg"]["status"] == "corrupt" and rows["corrupt.jpg"]["error"]
    assert rows["notes.png"]["status"] == "not_image" and rows["notes.png"]["error"]
    assert rows["empty.jpg"]["status"] == "empty"
    assert "8 read, 0 without a face, 3 errors" in err


@pytest.mark.slow
def test_predictions_follow_real_ages(capsys, utkface_files):
    """The pretrained IMDB model is poor on children but must still order babies below adults."""
    babies = [f for f in utkface_files if utkface_age(f) <= 2][:20]
    adults = [f for f in utkface_files if 40 <= utkface_age(f) <= 60][:20]
    code, out, _ = run_cli(capsys, "predict", "--crops", *map(str, babies + adults))
    ages = [r["age"] for r in parse("jsonl", out)]
    assert code == 0 and sum(ages[:20]) / 20 < sum(ages[20:]) / 20 - 5


def test_nothing_readable_exits_nonzero(capsys, tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_text("nope")
    code, out, err = run_cli(capsys, "predict", "--crops", str(bad))
    assert code == 1 and parse("jsonl", out)[0]["status"] == "not_image" and "0 read, 0 without a face, 1 errors" in err


def test_output_file_and_console_script(tmp_path, some_faces):
    target = tmp_path / "rows.csv"
    result = subprocess.run(
        [sys.executable, "-m", "minorage", "predict", "--crops", "--format", "csv", "-o", str(target), *map(str, some_faces[:3])],
        capture_output=True, text=True, check=True,
    )
    assert "3 read, 0 without a face, 0 errors" in result.stderr
    assert len(list(csv.DictReader(target.open()))) == 3


def test_info_describes_the_model(capsys):
    code, out, _ = run_cli(capsys, "info", "imdb")
    info = json.loads(out)
    assert code == 0 and info["parameters"] == 40531 and info["age_range"] == [0, 100]
    assert info["size_bytes"] > 300_000 and info["framing"]["margin"] == 0.4


@pytest.mark.slow
def test_minor_below_moves_the_flag_and_nothing_else(capsys, utkface_files):
    """Real 14-22 year olds through the default model: with the threshold at 21 the same ages
    are reported and every face estimated under 21 is flagged, so more are; out of the model's
    range the option is a clear error."""
    teens = [str(f) for f in utkface_files if 14 <= utkface_age(f) <= 22][:30]
    _, out, _ = run_cli(capsys, "predict", "--crops", *teens)
    code, wide_out, _ = run_cli(capsys, "predict", "--crops", "--minor-below", "21", *teens)
    plain, wide = parse("jsonl", out), parse("jsonl", wide_out)
    assert code == 0 and [r["age"] for r in plain] == [r["age"] for r in wide]
    assert all(r["minor"] == (r["age"] < 17.5) for r in plain) and all(r["minor"] == (r["age"] < 21) for r in wide)
    assert sum(r["minor"] for r in wide) > sum(r["minor"] for r in plain)
    code, _, err = run_cli(capsys, "predict", "--crops", "--minor-below", "40", teens[0])
    assert code == 2 and "within the model's range (0, 25]" in err


def test_unknown_model_is_a_clear_cli_error(capsys, some_faces):
    code, _, err = run_cli(capsys, "predict", "--crops", "--model", "nonsense", str(some_faces[0]))
    assert code == 2 and "no model named 'nonsense'" in err



def test_pyramid_factor_defaults_and_an_endless_pyramid_refused(capsys, some_faces):
    """`predict` looks at the finer pyramid and `scan` at MTCNN's, each from its config; a step
    of 1 or more would never end the pyramid, so it is a clear error, not a hang."""
    from minorage.cli import build_parser
    from minorage.config import InferenceConfig, ScanConfig

    assert build_parser().parse_args(["predict", "x.jpg"]).pyramid_factor == InferenceConfig.pyramid_factor
    assert build_parser().parse_args(["scan", "ev", "--out", "case"]).pyramid_factor == ScanConfig.pyramid_factor
    for factor in ("1", "1.5", "0"):
        code, _, err = run_cli(capsys, "predict", "--pyramid-factor", factor, str(some_faces[0]))
        assert code == 2 and "pyramid factor must lie strictly between 0 and 1" in err

def sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def photos_folder(tmp_path, some_faces):
    """Four real faces in nested folders, a face-free picture and a corrupt file."""
    import cv2
    import numpy as np

    folder = tmp_path / "photos"
    (folder / "a" / "b").mkdir(parents=True)
    for i, face in enumerate(some_faces[:4]):
        shutil.copy(face, folder / ("a/b" if i % 2 else "a") / face.name)
    cv2.imwrite(str(folder / "wall.png"), np.full((120, 160, 3), 90, np.uint8))
    (folder / "broken.jpg").write_bytes(some_faces[0].read_bytes()[:300])
    return folder


def test_occlude_writes_barred_copies_and_a_sidecar(capsys, tmp_path, photos_folder):
    before = {p: sha256(p) for p in photos_folder.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "occlude", str(photos_folder), "--out", str(out))
    assert code == 0 and "4 read, 1 without a face, 1 errors" in err and "wall.png" in err
    assert {p: sha256(p) for p in photos_folder.rglob("*") if p.is_file()} == before  # evidence untouched
    entries = {e["path"].rsplit("/", 1)[-1]: e for e in parse("jsonl", (out / "occlusions.jsonl").read_text())}
    assert entries["wall.png"]["status"] == "no_face" and not (out / "wall.png").exists()
    assert entries["broken.jpg"]["status"] == "corrupt" and not (out / "broken.jpg").exists()
    copies = [e for e in entries.values() if e["status"] == "ok"]
    assert len(copies) == 4
    import cv2

    for entry in copies:
        src = photos_folder / entry["output"]
        dst = out / entry["output"]
        assert src.is_file() and dst.is_file() and sha256(src) != sha256(dst)
        face = entry["faces"][0]
        assert set(face) >= {"box", "score", "eyes", "bar"}
        barred = cv2.imread(str(dst))
        for x, y in face["eyes"]:
            assert barred[int(round(y)), int(round(x))].max() < 40  # black, up to JPEG ringing


def test_occlude_refuses_to_overwrite_inputs(capsys, photos_folder):
    before = {p: sha256(p) for p in photos_folder.rglob("*") if p.is_file()}
    code, _, err = run_cli(capsys, "occlude", str(photos_folder), "--out", str(photos_folder), "--sidecar", "side.jsonl")
    entries = parse("jsonl", (photos_folder / "side.jsonl").read_text())
    assert {e["status"] for e in entries if e["path"].endswith(".chip.jpg")} == {"refused"}
    assert {p: sha256(p) for p in photos_folder.rglob("*") if p.is_file() and p.name != "side.jsonl"} == before


def test_predict_detects_faces_in_photos(capsys, tmp_path, photos_folder):
    annotated = tmp_path / "annotated"
    code, out, err = run_cli(capsys, "predict", "--model", "imdb", "--annotate", str(annotated), str(photos_folder))
    rows = parse("jsonl", out)
    assert code == 0 and "4 read, 1 without a face, 1 errors, 4 faces" in err
    faces = [r for r in rows if r["status"] == "ok"]
    assert len(faces) == 4
    for row in faces:
        assert row["face"] == 0 and len(row["box"]) == 4 and len(row["eyes"]) == 2 and row["score"] > 0.9
        assert 0 < row["age"] < 101 and row["group"] in {"0-5", "6-10", "11-15", "16-17", "18-25", "26+"}
    assert [r["status"] for r in rows if r["path"].endswith("wall.png")] == ["no_face"]
    assert len(list(annotated.rglob("*.jpg"))) == 4 and not list(annotated.rglob("wall.png"))


def test_predict_reads_videos_one_frame_a_second(capsys, tmp_path, some_faces):
    """A 3 s clip at 5 fps (a face, a blank second, another face), a clip of blanks only and a
    broken .mp4, in a folder: one row per face with its frame's time, a no_face row for the
    blank clip, a corrupt row for the broken one; the files are only read."""
    import cv2
    import numpy as np

    folder = tmp_path / "videos"
    folder.mkdir()
    first, second = (cv2.resize(cv2.imread(str(f)), (200, 200)) for f in some_faces[:2])
    blank = np.full((200, 200, 3), 90, np.uint8)
    for name, frames in (("clip.avi", [first] * 5 + [blank] * 5 + [second] * 5), ("blank.avi", [blank] * 10)):
        writer = cv2.VideoWriter(str(folder / name), cv2.VideoWriter_fourcc(*"MJPG"), 5, (200, 200))
        for frame in frames:
            writer.write(frame)
        writer.release()
    (folder / "broken.mp4").write_bytes(bytes(range(256)) * 16)
    before = {p: sha256(p) for p in folder.iterdir()}
    code, out, err = run_cli(capsys, "predict", "--video-every", "1", str(folder))
    rows = {}
    for row in parse("jsonl", out):
        rows.setdefault(row["path"].rsplit("/", 1)[-1], []).append(row)
    assert code == 0 and "1 read, 1 without a face, 1 errors, 2 faces" in err
    assert [(r["frame_time"], r["face"], r["status"]) for r in rows["clip.avi"]] == [(0.0, 0, "ok"), (2.0, 1, "ok")]
    assert all(0 <= r["age"] <= 25 and isinstance(r["minor"], bool) for r in rows["clip.avi"])
    assert [r["status"] for r in rows["blank.avi"]] == ["no_face"]
    assert [r["status"] for r in rows["broken.mp4"]] == ["corrupt"] and "cannot be opened" in rows["broken.mp4"][0]["error"]
    assert {p: sha256(p) for p in folder.iterdir()} == before
    code, out, _ = run_cli(capsys, "predict", "--video-every", "1", "--max-video-frames", "1", "--format", "csv", str(folder / "clip.avi"))
    assert [r["frame_time"] for r in parse("csv", out)] == ["0.0"]


def test_crops_with_a_margin_are_framed_on_the_face_found_in_them(capsys, tmp_path, utkface_files):
    """FairFace-style crops: 448 px, the face in the middle half, the rest background. The face
    is found and framed as the model expects, so children stay children; the row says so."""
    children = [f for f in utkface_files if 2 <= utkface_age(f) <= 9][::40][:10]
    rng = np.random.default_rng(0)
    folder = tmp_path / "padded"
    folder.mkdir()
    for path in children:
        canvas = cv2.GaussianBlur(rng.integers(0, 255, (448, 448, 3), dtype=np.uint8), (0, 0), 6)
        canvas[112:336, 112:336] = cv2.resize(cv2.imread(str(path)), (224, 224))
        cv2.imwrite(str(folder / path.name), canvas)
    code, out, _ = run_cli(capsys, "predict", "--crops", str(folder))
    rows = parse("jsonl", out)
    assert code == 0 and len(rows) == 10 and all(r["framing"] == "detected" for r in rows)
    for row in rows:
        x1, y1, x2, y2 = row["box"]
        assert 80 < x1 < 200 and 80 < y1 < 200 and 250 < x2 < 370 and 250 < y2 < 370  # the face, not the canvas
    assert sum(r["minor"] for r in rows) >= 9
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    code, out, _ = run_cli(capsys, "predict", "--crops", str(blank))
    assert parse("jsonl", out)[0]["framing"] == "whole_image"  # nothing found: the whole image is the face


def light_run(*argv: str) -> subprocess.CompletedProcess:
    """`minorage ARGV` in a fresh interpreter that fails if torch was imported."""
    script = ("import sys\nfrom minorage.cli import main\n"
              f"try:\n    code = main({list(argv)!r})\nexcept SystemExit as done:\n    code = done.code\n"
              "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)


def test_help_report_and_info_run_without_torch(tmp_path, capsys, some_faces):
    """The light commands start fast: `--help`, `report` of a case and `info` of the shipped
    model never import torch (the case is scanned first, here, where torch may load)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for face in some_faces[:3]:
        shutil.copy(face, folder / face.name)
    assert run_cli(capsys, "scan", str(folder), "--out", str(tmp_path / "case"), "--workers", "1")[0] == 0
    helped = light_run("--help")
    assert helped.returncode == 0 and "predict" in helped.stdout, helped.stderr
    reported = light_run("report", str(tmp_path / "case"), "--format", "json", "-o", str(tmp_path / "r.json"))
    assert reported.returncode == 0, reported.stderr
    assert len(json.loads((tmp_path / "r.json").read_text())["faces"]) >= 3
    info = light_run("info")
    assert info.returncode == 0, info.stderr
    shown = json.loads(info.stdout)
    networks = shown["architecture"]["members"] + (shown["edge"]["architecture"]["members"] if "edge" in shown else 0)
    assert shown["parameters"] == networks * 40531 and shown["age_range"] == [0, 25]
    assert shown["predict_runs_in"] == "ONNX Runtime, from its exports"


def test_predict_whose_reader_leaves_ends_quietly(photos_folder):
    """`minorage predict ... | head`: the reader closing the pipe ends the run without a
    traceback, with a shell's status for it."""
    process = subprocess.Popen([sys.executable, "-m", "minorage", "predict", str(photos_folder)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader leaves before the first row
    err = process.stderr.read()
    assert process.wait(timeout=300) == 141 and "Traceback" not in err and "error" not in err


def test_the_cli_leaves_sigpipe_as_python_sets_it(capsys):
    """Run in a process that has other pipes (a scan's workers, a test runner), a command must
    not make a broken pipe end that process: SIGPIPE stays ignored."""
    import signal

    before = signal.getsignal(signal.SIGPIPE)
    assert main(["info"]) == 0
    capsys.readouterr()
    assert signal.getsignal(signal.SIGPIPE) == before == signal.SIG_IGN


def test_predict_in_threads_gives_the_rows_of_one_thread_in_the_same_order(capsys, tmp_path, mixed_folder, some_faces):
    """Files are read and searched for faces several at a time: the rows, errors and order must
    be those of one file at a time, on real photos mixed with broken files and a link."""
    for face in some_faces[8:20]:
        shutil.copy(face, mixed_folder / face.name)
    (mixed_folder / "link.jpg").symlink_to(some_faces[3])
    _, one, _ = run_cli(capsys, "predict", "--threads", "1", "--batch-size", "5", str(mixed_folder))
    _, three, _ = run_cli(capsys, "predict", "--threads", "3", "--batch-size", "5", str(mixed_folder))
    rows = parse("jsonl", one)
    assert parse("jsonl", three) == rows
    assert len({r["path"] for r in rows if r["status"] == "ok"}) >= 15 and {"corrupt", "not_image", "empty"} <= {r["status"] for r in rows}
    assert run_cli(capsys, "predict", "--threads", "-1", str(mixed_folder))[0] != 0

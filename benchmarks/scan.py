"""`minorage scan` end to end on 2 cores: photos/s for a folder of real photos as they are
(UTKFace's 200 px chips) and as scenes of 640 and 1280 px, timed as the command a user runs (a
fresh process: imports, workers' start and exit included); where the time goes (reading,
decoding, detection, age estimation, storing) from a scan of the same folder in this process;
and the peak memory of a 10,000-file scan.

A folder's photos/s counts the command's start-up, which a folder of a few hundred photos feels
and a seized collection does not. So each folder's first photo is also scanned alone by the
command: its time is the start-up (`startup_seconds`, one photo included), and the folder's
other photos over the time beyond it are the rate a long scan keeps (`photos_per_s_after_startup`).
Each command runs `--runs` times, in turn with the other; the medians are reported, and the
folder's slowest and fastest photos/s beside them: one timing on 2 shared cores is noise.

    .venv/bin/python benchmarks/scan.py [--photos 300] [--big 10000] [--workers 0] [--runs 3] [--min-face-size N] [--detectors W ...]
        [--factor F ...] [--models M ...]

Scenes: a face-free picture (scikit-image's samples) scaled to the size with two real UTKFace
faces pasted in at 1/4 and 1/8 of its width, written as JPEG. The 10,000-file scan uses
hard links to (or copies of) the UTKFace photos, each photo several times under other names: a
scan records symbolic links to files outside its sources without reading them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
from scene import compose  # benchmarks/scene.py

from minorage import config
from minorage.config import DetectorConfig, ScanConfig
from minorage.model.estimator import AgeEstimator
from minorage.triage.scan import scan


def write_scenes(folder: Path, size: int, count: int) -> None:
    """`count` JPEG scenes of `size` px wide, each with two real faces."""
    from minorage.faces.detector_training import FACE_FREE_EVAL, face_free_pictures  # PyTorch: not in the memory run's process

    faces = sorted(config.utkface_dir().glob("*.jpg"))
    backgrounds = face_free_pictures(FACE_FREE_EVAL)
    folder.mkdir(parents=True)
    for k in range(count):
        pair = tuple(cv2.imread(str(faces[(37 * (2 * k + j)) % len(faces)])) for j in (0, 1))
        scene = compose(backgrounds[k % len(backgrounds)], pair, size)
        cv2.imwrite(str(folder / f"scene_{k:05d}.jpg"), scene, [cv2.IMWRITE_JPEG_QUALITY, 90])


def link_photos(folder: Path, count: int) -> None:
    """`count` UTKFace photos under new names: hard links where the file system allows, else copies."""
    photos = sorted(config.utkface_dir().glob("*.jpg"))
    folder.mkdir(parents=True)
    for k in range(count):
        source, target = photos[k % len(photos)], folder / f"{k:05d}_{photos[k % len(photos)].name}"
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants, from /proc."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total


def run_one(folder: Path, case: Path, cfg: ScanConfig, detector: DetectorConfig, model: str = "default") -> dict:
    summary = scan([str(folder)], case, AgeEstimator.from_pretrained(model), detector, cfg, progress=False)
    total = sum(summary.stage_seconds.values()) or 1.0
    return {
        "files": summary.scanned,
        "photos_per_s": round(summary.scanned / summary.seconds, 1),
        "faces_per_s": round(summary.faces / summary.seconds, 1),
        "faces": summary.faces,
        "seconds": round(summary.seconds, 1),
        "time_share": {k: round(v / total, 3) for k, v in summary.stage_seconds.items()},
    }


def command_seconds(folder: Path, case: Path, cfg: ScanConfig, detector: DetectorConfig, model: str) -> float:
    """Wall seconds of the `minorage scan` command over a folder, in a fresh process as a user
    runs it: its imports, its workers' start and its exit count."""
    command = [sys.executable, "-m", "minorage", "scan", str(folder), "--out", str(case), "--model", model, "--workers", str(cfg.workers),
               "--detector", detector.weights, "--min-face-size", str(detector.min_face_size), "--pyramid-factor", str(detector.factor)]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def as_commands(folder: Path, case: Path, cfg: ScanConfig, detector: DetectorConfig, model: str, runs: int) -> dict:
    """The folder scanned in this process (`run_one`: where the time goes), then by the command,
    `runs` times in turn: over the folder, and over its first photo alone, whose time is the
    start-up (one photo included); the folder's other photos over the time beyond it are the
    rate a long scan keeps. Each figure is the median over the runs, with the slowest and the
    fastest run's photos/s beside it. Why the command as well: in this process every scan after
    the first reuses the fork server the first one started, so its photos/s leaves out part of
    the start-up a user waits for."""
    alone = folder.with_name(folder.name + "_first")
    if not alone.exists():
        alone.mkdir()
        first = min(folder.iterdir())
        os.link(first, alone / first.name)
    photos = sum(1 for _ in folder.iterdir())
    in_process = run_one(folder, case, cfg, detector, model)
    wholes, startups = [], []
    for k in range(runs):
        wholes.append(command_seconds(folder, case.with_name(f"{case.name}_command_{k}"), cfg, detector, model))
        startups.append(command_seconds(alone, case.with_name(f"{case.name}_first_{k}"), cfg, detector, model))
    whole, startup = statistics.median(wholes), statistics.median(startups)
    return {
        "photos": photos, "faces": in_process["faces"], "runs": runs,
        "photos_per_s": round(photos / whole, 1), "photos_per_s_slowest_fastest": [round(photos / max(wholes), 1), round(photos / min(wholes), 1)],
        "seconds": round(whole, 2), "startup_seconds": round(startup, 2),
        "photos_per_s_after_startup": round((photos - 1) / (whole - startup), 1) if whole > startup else None,
        "in_process": {k: in_process[k] for k in ("photos_per_s", "faces_per_s", "seconds", "time_share")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=300, help="files per folder for the speed runs")
    parser.add_argument("--big", type=int, default=10_000, help="files in the memory run (0 = skip)")
    parser.add_argument("--workers", type=int, default=0, help="0 = one per core")
    parser.add_argument("--runs", type=int, default=3, help="times each folder is scanned by the command, in turn with its first photo (default: %(default)s)")
    parser.add_argument("--min-face-size", type=int, default=ScanConfig().min_face_size)
    parser.add_argument("--detectors", nargs="+", default=[DetectorConfig().weights], help="detector weight choices, timed side by side (default: the default)")
    parser.add_argument("--factor", type=float, nargs="+", default=[ScanConfig().pyramid_factor],
                        help="image pyramid steps, each timed side by side with each detector (default: scan's)")
    parser.add_argument("--models", nargs="+", default=["default"],
                        help="age models (`--model` of scan), each timed side by side with each detector choice (default: %(default)s)")
    parser.add_argument("--memory-run", help=argparse.SUPPRESS)  # internal: one scan in a fresh process
    args = parser.parse_args()
    cfg = ScanConfig(workers=args.workers)
    detector = DetectorConfig(min_face_size=args.min_face_size, weights=args.detectors[0], factor=args.factor[0])
    if args.memory_run:
        folder = Path(args.memory_run)
        print(json.dumps(run_one(folder / "photos", folder / "case", cfg, detector, args.models[0])))
        return
    report = {"cores": len(os.sched_getaffinity(0)), "workers": cfg.workers or "one per core", "min_face_size": args.min_face_size}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        link_photos(tmp / "utkface", args.photos)
        for size in (640, 1280):
            write_scenes(tmp / f"scenes_{size}", size, args.photos)
        variants = [(w, f, m) for w in args.detectors for f in args.factor for m in args.models]
        for k, (weights, factor, model) in enumerate(variants):  # each on the same folders, in turn
            chosen = DetectorConfig(min_face_size=args.min_face_size, weights=weights, factor=factor)
            name = ", ".join([weights] + [f"factor {factor}"] * (len(args.factor) > 1) + [f"model {model}"] * (len(args.models) > 1))
            name += f" (run {sum(key.startswith(name) for key in report) + 1})" if variants.count(variants[k]) > 1 else ""
            report[name] = {"utkface_200px": as_commands(tmp / "utkface", tmp / f"case_utk_{k}", cfg, chosen, model, args.runs)}
            for size in (640, 1280):
                report[name][f"scenes_{size}px"] = as_commands(tmp / f"scenes_{size}", tmp / f"case_{size}_{k}", cfg, chosen, model, args.runs)
        if args.big:
            link_photos(tmp / "big" / "photos", args.big)
            command = [sys.executable, __file__, "--memory-run", str(tmp / "big"), "--workers", str(args.workers), "--min-face-size", str(args.min_face_size),
                       "--detectors", args.detectors[0], "--factor", str(args.factor[0]),
                       "--models", args.models[0]]
            process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            peak = 0
            while process.poll() is None:
                peak = max(peak, tree_rss(process.pid))
                time.sleep(0.2)
            result = json.loads(process.stdout.read().strip().splitlines()[-1])
            result["peak_memory_mb_all_processes"] = round(peak / 2**20, 1)
            result["peak_memory_mb_largest_process"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
            report[f"scan_of_{args.big}_files"] = result
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

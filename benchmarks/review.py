"""`minorage review` on a case of 10,000 faces: how long its first page takes, and how long a
decision takes to be saved, on this machine.

    .venv/bin/python benchmarks/review.py [--faces 10000] [--photos 100] [--repeats 20] [--decisions 200]

The case: `--photos` real UTKFace photos scanned for real (`minorage scan`), then their file and
face rows repeated under other file names until the case holds `--faces` faces (the same
thumbnails and estimates; the review reads only the case, so the copies cost it what real faces
would). The app runs as users run it, `minorage review CASE` in its own process, and is asked
over HTTP on 127.0.0.1:
- first page: the grid as it opens (sorted by p_minor, 60 faces), the HTML alone and the HTML
  with its 60 thumbnails fetched one after another (a browser fetches them six at a time);
  also sorted by age, filtered to unreviewed faces and searched by path text;
- in Chromium (when chromium and chromedriver are installed): the page's load event, every
  thumbnail drawn;
- a decision: the POST that saves it, answered once it is committed to the case.
Each timing is repeated; min / median / max are printed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from minorage import config


def build_case(folder: Path, photos: int, faces: int) -> Path:
    """A scanned case of `photos` real photos, its rows repeated to `faces` faces."""
    source = folder / "photos"
    source.mkdir()
    for path in sorted(config.utkface_dir().glob("*.jpg"))[::97][:photos]:
        shutil.copy(path, source / path.name)
    case = folder / "case"
    subprocess.run([sys.executable, "-m", "minorage", "scan", str(source), "--out", str(case), "--workers", "2"], check=True,
                   stderr=subprocess.DEVNULL)
    db = sqlite3.connect(case / "case.sqlite")
    with db:
        base = db.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
        copy = 1
        while db.execute("SELECT COUNT(*) FROM faces").fetchone()[0] < faces:
            _repeat(db, copy, faces - db.execute("SELECT COUNT(*) FROM faces").fetchone()[0])
            copy += 1
    print(f"case: {photos} photos scanned ({base} faces), repeated to {db.execute('SELECT COUNT(*) FROM faces').fetchone()[0]:,} faces; "
          f"{os.path.getsize(case / 'case.sqlite') / 2**20:.0f} MiB")
    db.close()
    return case


def _repeat(db: sqlite3.Connection, copy: int, wanted: int) -> None:
    files = db.execute("SELECT id, path, size, sha256, sha1, md5, media, status, faces, scanned_at, run_id FROM files "
                       "WHERE media = 'image' AND path NOT LIKE '%#copy%' AND faces > 0").fetchall()
    for file_id, path, *rest in files:
        if wanted <= 0:
            return
        name = f"{path}#copy{copy}"
        cursor = db.execute("INSERT INTO files (path, path_bytes, size, sha256, sha1, md5, media, status, faces, scanned_at, run_id) "
                            "VALUES (?,?,?,?,?,?,?,?,?,?,?)", (name, os.fsencode(name), *rest))
        added = db.execute("INSERT INTO faces (file_id, face, frame_time, x1, y1, x2, y2, left_eye_x, left_eye_y, right_eye_x, right_eye_y, "
                           "score, age, age_group, minor, p_minor, age_low, age_high, eyes_occluded, thumbnail) SELECT ?, face, frame_time, "
                           "x1, y1, x2, y2, left_eye_x, left_eye_y, right_eye_x, right_eye_y, score, age, age_group, minor, p_minor, age_low, "
                           "age_high, eyes_occluded, thumbnail FROM faces WHERE file_id = ?", (cursor.lastrowid, file_id)).rowcount
        wanted -= added


def start(case: Path) -> tuple[subprocess.Popen, str, int, str]:
    """`minorage review CASE` in its own process: (process, host, port, the token's path)."""
    process = subprocess.Popen([sys.executable, "-m", "minorage", "review", str(case)], stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    threading.Thread(target=process.stderr.read, daemon=True).start()  # the rest drained: a full pipe would stall the app
    found = re.search(r"http://([\d.]+):(\d+)(/[^ ]+/)", line)
    if not found:
        process.kill()
        raise SystemExit(f"review did not start: {line}")
    return process, found.group(1), int(found.group(2)), found.group(3)


def timed(repeats: int, call) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def line(what: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"| {what} | {min(ms):.1f} | {statistics.median(ms):.1f} | {max(ms):.1f} | {len(ms)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, default=10_000)
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--decisions", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        case = build_case(Path(tmp), args.photos, args.faces)
        process, host, port, root = start(case)
        try:
            connection = http.client.HTTPConnection(host, port, timeout=30)

            def get(path: str) -> bytes:
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                assert response.status == 200, (path, response.status)
                return body

            def page_and_thumbnails(query: str = "") -> None:
                for face in re.findall(rb'data-face="(\d+)"', get(root + query)):
                    get(f"{root}thumb/{face.decode()}")

            get(root)  # the first request after start-up
            print("\n| first page (ms) | min | median | max | runs |\n|---|---|---|---|---|")
            print(line("HTML, sorted by p_minor", timed(args.repeats, lambda: get(root))))
            print(line("HTML and its 60 thumbnails, one after another", timed(args.repeats, page_and_thumbnails)))
            print(line("HTML, sorted by age", timed(args.repeats, lambda: get(root + "?sort=age"))))
            print(line("HTML, unreviewed only", timed(args.repeats, lambda: get(root + "?review=unreviewed"))))
            print(line("HTML, path search", timed(args.repeats, lambda: get(root + "?q=copy7"))))
            print(line("HTML, page 100", timed(args.repeats, lambda: get(root + "?page=100"))))
            browser = browser_load(f"http://{host}:{port}{root}", args.repeats)
            if browser:
                print(line("Chromium: load event, every thumbnail drawn", browser))
            ids = [int(i) for i in re.findall(rb'data-face="(\d+)"', get(root + f"?per_page={min(500, args.decisions)}"))]
            decisions = iter(["minor", "adult", "not_face", "unsure"] * args.decisions)

            def decide(face: int) -> None:
                body = json.dumps({"face": face, "decision": next(decisions), "note": "benchmark"})
                connection.request("POST", f"{root}api/review", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                assert response.status == 200, response.status

            spent = [timed(1, lambda f=f: decide(f))[0] for f in (ids * (args.decisions // len(ids) + 1))[: args.decisions]]
            print("\n| a decision saved (ms) | min | median | max | runs |\n|---|---|---|---|---|")
            print(line("POST, committed to the case", spent))
            p95 = sorted(spent)[int(0.95 * len(spent)) - 1] * 1000
            print(f"\n95th percentile of a decision: {p95:.1f} ms; reviews in the case: "
                  f"{sqlite3.connect(case / 'case.sqlite').execute('SELECT COUNT(*) FROM reviews').fetchone()[0]}")
        finally:
            process.terminate()
            process.wait()


def browser_load(url: str, repeats: int) -> list[float] | None:
    """The page's load event in headless Chromium (navigation start to load end), or None."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    with tempfile.TemporaryDirectory() as profile:
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--window-size=1300,900"):
            options.add_argument(flag)
        browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            out = []
            for _ in range(repeats):
                browser.get(url)
                timing = browser.execute_script("const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd - t.startTime;")
                complete = browser.execute_script("return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0);")
                assert complete, "a thumbnail was not drawn"
                out.append(timing / 1000)
            return out
        finally:
            browser.quit()


if __name__ == "__main__":
    main()

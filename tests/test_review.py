"""The examiner's review: p_minor and the interval in every output, the `minorage review` app
(in the test client and in a real browser), the reviews in the exports and VICS categories."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from minorage.cli import main
from minorage.faces.framing import leaves_image
from minorage.triage.case import add_review

from .conftest import CHROMIUM_FLAGS, utkface_age


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, utkface_files) -> tuple[Path, Path, dict]:
    """(evidence folder, case folder, SHA-256 of every evidence file) for a scan of real faces
    of children and adults, one eye-barred, a short video and a file that is no image."""
    from minorage.faces.detection import FaceDetector, main_face
    from minorage.faces.occlusion import occlude

    root = tmp_path_factory.mktemp("evidence")
    children = [p for p in utkface_files if 3 <= utkface_age(p) <= 12][::300][:3]
    adults = [p for p in utkface_files if 35 <= utkface_age(p) <= 60][::900][:3]
    for path in children + adults:
        shutil.copy(path, root / path.name)
    image = cv2.imread(str(children[0]))
    barred, _ = occlude(image, main_face(FaceDetector().detect(image), image.shape))
    cv2.imwrite(str(root / "barred.png"), barred)
    writer = cv2.VideoWriter(str(root / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (200, 200))
    for i in range(15):  # a face from 0 s, a blank second, another face at 2 s
        writer.write(image if i < 5 else np.full((200, 200, 3), 90, np.uint8) if i < 10 else cv2.imread(str(adults[0])))
    writer.release()
    (root / "notes.txt").write_text("case notes\n")
    hostile = os.fsencode(root) + b"/<img src=x onerror=alert(1)>\xff.jpg"  # markup and a byte that is not UTF-8
    shutil.copy(adults[1], os.fsdecode(hostile))
    case = tmp_path_factory.mktemp("case") / "case"
    assert main(["scan", str(root), "--out", str(case), "--workers", "1"]) == 0
    return root, case, _fingerprints(root)


def _fingerprints(root: Path) -> dict[bytes, str]:
    return {os.fsencode(p.name): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.iterdir()}


def _db(case: Path) -> sqlite3.Connection:
    db = sqlite3.connect(case / "case.sqlite")
    db.row_factory = sqlite3.Row
    return db


# ---------------------------------------------------------------------------------------------
# p_minor and the interval in predict, scan and the flag stated as a probability


def test_scan_stores_p_minor_and_the_interval_as_the_verdict_gives_them(scanned):
    from minorage.model.estimator import AgeEstimator
    from minorage.triage.pipeline import Reading

    _, case, _ = scanned
    estimator = AgeEstimator.from_pretrained()
    reading = Reading.of(estimator)
    rows = _db(case).execute("SELECT path_bytes, media, x1, y1, x2, y2, age, age_group, minor, p_minor, age_low, age_high, eyes_occluded "
                             "FROM faces JOIN files ON files.id = faces.file_id").fetchall()
    assert len(rows) >= 8 and sum(r["eyes_occluded"] for r in rows) == 1
    def part(r) -> Reading:
        """The reading of the part that read the face, where the model has two: by where its frame lay in the picture."""
        shape = (200, 200) if r["media"] == "video" else Image.open(os.fsdecode(r["path_bytes"])).size[::-1]
        filled = estimator.edge is not None and leaves_image(shape, (r["x1"], r["y1"], r["x2"], r["y2"]), estimator.edge.framing.margin)
        return reading.edge if filled else reading

    for r in rows:
        said = part(r).verdict(r["age"], bool(r["eyes_occluded"]))
        assert (r["age_group"], r["minor"]) == (said["group"], int(said["minor"]))
        assert r["p_minor"] == pytest.approx(said["p_minor"], abs=1e-4) and (r["age_low"], r["age_high"]) == (said["age_low"], said["age_high"])
        assert 0 <= r["p_minor"] <= 1 and r["age_low"] <= r["age_high"]
    # the barred face is read with the barred calibration: its interval is not the normal one's
    barred = next(r for r in rows if r["eyes_occluded"])
    calibration = part(barred).calibration
    assert calibration.barred != calibration.normal
    assert barred["p_minor"] == pytest.approx(calibration.barred.probability(np.array([barred["age"]]))[0], abs=1e-4)
    # children are probably minors, adults probably not
    ps = sorted(r["p_minor"] for r in rows)
    assert ps[0] < 0.2 and ps[-1] > 0.8


def test_predict_rows_carry_p_minor_and_minor_above_flags_by_it(scanned, capsys):
    root, _, _ = scanned
    assert main(["predict", str(root), "--format", "json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if r["status"] == "ok"]
    assert len(rows) >= 8 and all({"p_minor", "age_low", "age_high", "eyes_occluded"} <= set(r) for r in rows)
    assert [r["eyes_occluded"] for r in rows if r["path"].endswith("barred.png")] == [True]
    assert main(["predict", str(root), "--format", "json", "--minor-above", "0.5"]) == 0
    by_p = [r for r in json.loads(capsys.readouterr().out) if r["status"] == "ok"]
    assert [r["minor"] for r in by_p] == [r["p_minor"] > 0.5 for r in by_p] and any(r["minor"] for r in by_p)
    # a model without a calibration cannot state its flag as a probability; nor can both rules be given
    assert main(["predict", str(root), "--model", "imdb", "--minor-above", "0.5"]) == 2
    assert "needs a model calibrated" in capsys.readouterr().err
    assert main(["predict", str(root), "--minor-above", "0.5", "--minor-below", "18"]) == 2
    assert "give one of them" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The review app, in Flask's test client


@pytest.fixture()
def app(scanned, tmp_path):
    """A review app over a copy of the scanned case (reviews written here stay in this test)."""
    from minorage.triage.review import create_app

    _, case, _ = scanned
    copy = tmp_path / "case"
    shutil.copytree(case, copy)
    application = create_app(copy, "examiner 1", "tok3n", 5000)
    return application, copy


def _get(client, path: str, **kw):
    return client.get(path, headers={"Host": "127.0.0.1:5000"}, **kw)


def _post(client, path: str, body: dict, **headers):
    return client.post(path, json=body, headers={"Host": "127.0.0.1:5000", **headers})


def test_the_grid_pages_sorts_and_filters(app):
    application, case = app
    client = application.test_client()
    page = _get(client, "/tok3n/")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    html = page.get_data(as_text=True)
    db = _db(case)
    total = db.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
    assert f"0 of {total} reviewed" in html and html.count('class="card') == total
    # sorted by p_minor, most probable minor first
    order = [int(x) for x in _cards(html)]
    ps = dict(db.execute("SELECT id, p_minor FROM faces").fetchall())
    assert [ps[i] for i in order] == sorted(ps.values(), reverse=True)
    by_age = [int(x) for x in _cards(_get(client, "/tok3n/?sort=age").get_data(as_text=True))]
    ages = dict(db.execute("SELECT id, age FROM faces").fetchall())
    assert [ages[i] for i in by_age] == sorted(ages.values())
    # paging: two per page, every face once over the pages
    seen = []
    for number in range(1, total // 2 + 2):
        seen += _cards(_get(client, f"/tok3n/?per_page=2&page={number}").get_data(as_text=True))
    assert sorted(map(int, seen)) == sorted(ps)
    # filters
    barred = _cards(_get(client, "/tok3n/?barred=yes").get_data(as_text=True))
    assert [int(x) for x in barred] == [i for (i,) in db.execute("SELECT id FROM faces WHERE eyes_occluded = 1")]
    flagged = _cards(_get(client, "/tok3n/?flag=yes").get_data(as_text=True))
    assert sorted(map(int, flagged)) == sorted(i for (i,) in db.execute("SELECT id FROM faces WHERE minor = 1"))
    in_video = _cards(_get(client, "/tok3n/?q=clip.avi").get_data(as_text=True))
    assert len(in_video) == 2
    assert _cards(_get(client, "/tok3n/?q=%25").get_data(as_text=True)) == []  # a % is text, not a wildcard
    hostile = _get(client, "/tok3n/?sort=age;DROP%20TABLE%20faces&group=x'--&page=-4&per_page=999999")
    assert hostile.status_code == 200 and db.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == total


def _cards(html: str) -> list[str]:
    import re

    return re.findall(r'data-face="(\d+)"', html)


def test_decisions_are_appended_and_the_latest_counts(app):
    application, case = app
    client = application.test_client()
    face = _db(case).execute("SELECT id FROM faces ORDER BY id LIMIT 1").fetchone()[0]
    first = _post(client, "/tok3n/api/review", {"face": face, "decision": "unsure", "note": "look again"})
    assert first.status_code == 200 and first.get_json()["reviewed"] == 1
    second = _post(client, "/tok3n/api/review", {"face": face, "decision": "minor"})
    assert second.get_json()["saved"]["decision"] == "minor" and second.get_json()["reviewed"] == 1
    db = _db(case)
    rows = db.execute("SELECT decision, note, reviewer FROM reviews WHERE face_id = ? ORDER BY id", (face,)).fetchall()
    assert [tuple(r) for r in rows] == [("unsure", "look again", "examiner 1"), ("minor", None, "examiner 1")]
    assert db.execute("SELECT decision FROM decisions WHERE face_id = ?", (face,)).fetchone()[0] == "minor"
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE reviews SET decision = 'adult'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM reviews")
    assert "1 of" in _get(client, "/tok3n/?review=minor").get_data(as_text=True)
    assert _cards(_get(client, "/tok3n/?review=minor").get_data(as_text=True)) == [str(face)]
    assert str(face) not in _cards(_get(client, "/tok3n/?review=unreviewed").get_data(as_text=True))
    assert _post(client, "/tok3n/api/review", {"face": 10**6, "decision": "minor"}).status_code == 404
    assert _post(client, "/tok3n/api/review", {"face": face, "decision": "delete"}).status_code == 400
    assert _post(client, "/tok3n/api/review", {"face": "x"}).status_code == 400


def test_only_the_token_and_this_machine_reach_the_app(app):
    application, case = app
    client = application.test_client()
    face = _db(case).execute("SELECT id FROM faces LIMIT 1").fetchone()[0]
    assert _get(client, "/").status_code == 404
    assert _get(client, "/wrong/").status_code == 404
    assert _get(client, "/tok3n").status_code in (301, 308, 404)
    assert client.get("/tok3n/", headers={"Host": "attacker.example:5000"}).status_code == 403  # DNS rebinding
    assert _post(client, "/tok3n/api/review", {"face": face, "decision": "adult"}, Origin="http://attacker.example").status_code == 403
    assert _db(case).execute("SELECT COUNT(*) FROM reviews").fetchone()[0] == 0


def test_a_photo_is_shown_only_for_files_the_case_records(app, scanned):
    root, _, before = scanned
    application, case = app
    client = application.test_client()
    db = _db(case)
    photo = db.execute("SELECT files.id, faces.id FROM files JOIN faces ON files.id = file_id WHERE path LIKE '%barred.png'").fetchone()
    shown = _get(client, f"/tok3n/image/{photo[0]}?face={photo[1]}")
    assert shown.status_code == 200 and shown.mimetype == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(shown.data, np.uint8), cv2.IMREAD_COLOR)
    assert max(image.shape[:2]) >= 640 and (image[..., 2] > 200).sum() > 100  # enlarged, a red (flagged) or green box drawn
    page = _get(client, f"/tok3n/file/{photo[0]}?face={photo[1]}").get_data(as_text=True)
    assert "barred.png" in page and f"image/{photo[0]}" in page
    # the video's frame at 2 s, found again as the scan sampled it
    video, at = db.execute("SELECT files.id, frame_time FROM files JOIN faces ON files.id = file_id WHERE path LIKE '%clip.avi' "
                           "AND frame_time > 0").fetchone()
    assert _get(client, f"/tok3n/image/{video}?t={at}").status_code == 200
    # nothing else: a file that is no image, a folder, an unknown number, a path in the URL
    other = [i for (i,) in db.execute("SELECT id FROM files WHERE media NOT IN ('image', 'video')")]
    assert len(other) == 2  # notes.txt and the folder
    for path in [*(f"/tok3n/image/{i}" for i in other), "/tok3n/image/999999", "/tok3n/image/..%2F..%2Fetc%2Fpasswd",
                 "/tok3n/image/%2Fetc%2Fpasswd", "/tok3n/file/999999", "/tok3n/image/-1"]:
        assert _get(client, path).status_code == 404, path
    # a hostile name is shown as text, and its photo is found by its exact bytes
    odd = db.execute("SELECT files.id, faces.id FROM files JOIN faces ON files.id = file_id WHERE path LIKE '%onerror%'").fetchone()
    page = _get(client, f"/tok3n/file/{odd[0]}?face={odd[1]}").get_data(as_text=True)
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;\\xff.jpg" in page
    assert _get(client, f"/tok3n/image/{odd[0]}").status_code == 200
    assert "&lt;img src=x" in _get(client, "/tok3n/?q=onerror").get_data(as_text=True)
    assert _fingerprints(root) == before  # the evidence untouched by the scan and by showing it


def test_a_file_changed_since_the_scan_is_not_shown(scanned, tmp_path, utkface_files):
    from minorage.triage.review import create_app

    root = tmp_path / "ev"
    root.mkdir()
    target = root / "one.jpg"
    shutil.copy(next(p for p in utkface_files if utkface_age(p) == 8), target)
    case = tmp_path / "case"
    assert main(["scan", str(root), "--out", str(case), "--workers", "1"]) == 0
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF  # the same size, other bytes
    target.write_bytes(bytes(data))
    file_id = _db(case).execute("SELECT id FROM files WHERE media = 'image'").fetchone()[0]
    client = create_app(case, "x", "t", 5000).test_client()
    answer = client.get(f"/t/image/{file_id}", headers={"Host": "localhost:5000"})
    assert answer.status_code == 410 and "has changed" in answer.get_data(as_text=True) and "one.jpg" in answer.get_data(as_text=True)


# ---------------------------------------------------------------------------------------------
# Exports: the reviews in CSV and JSON, VICS categories


def test_exports_carry_the_reviews_and_vics_categories_follow_them(scanned, tmp_path):
    from minorage.triage.vics import category

    _, case, _ = scanned
    copy = tmp_path / "case"
    shutil.copytree(case, copy)
    db = _db(copy)
    faces = {Path(p).name: (i, m) for i, p, m in db.execute("SELECT faces.id, path, minor FROM faces JOIN files ON files.id = file_id")}
    child, adult = sorted(faces, key=lambda n: faces[n][1], reverse=True)[0], next(n for n in faces if not faces[n][1] and n.endswith(".jpg"))
    add_review(db, faces[child][0], "adult", "looks older", "e1")
    add_review(db, faces[child][0], "minor", "checked again", "e1")
    add_review(db, faces[adult][0], "adult", None, "e1")
    db.close()
    for fmt in ("csv", "json", "vics", "html"):
        assert main(["report", str(copy), "--format", fmt]) == 0
    rows = {Path(r["path"]).name + r["face"] + r["frame_time"]: r for r in csv.DictReader(io.StringIO((copy / "report.csv").read_text()))}
    assert rows[child + "0"]["review"] == "minor" and rows[child + "0"]["review_note"] == "checked again" and rows[child + "0"]["reviewer"] == "e1"
    assert rows[adult + "0"]["review"] == "adult" and all(r["p_minor"] for r in rows.values())
    assert sum(1 for r in rows.values() if r["review"]) == 2
    data = json.loads((copy / "report.json").read_text())
    assert data["counts"]["reviews"] == {"adult": 1, "minor": 1}
    feed = {m["MediaFiles"][0]["FileName"]: m for m in json.loads((copy / "report.vics.json").read_text())["value"]}
    assert feed[child]["Category"] == 2 and "minorage: reviewed" in feed[child]["Tags"] and "reviewed as minor by e1" in feed[child]["Comments"]
    assert feed[adult]["Category"] == 0
    for name, media in feed.items():
        if name not in (child, adult):
            flagged = "minorage: probable minor" in media["Tags"]
            assert media["Category"] == (2 if flagged else None) and (("minorage: category from the flag (not reviewed)" in media["Tags"]) == flagged)
    page = (copy / "report.html").read_text()
    assert "checked again" in page and "Reviewed: 2" in page
    # the mapping itself, by hand
    f = lambda minor, decision: {"minor": minor, "decision": decision}  # noqa: E731
    assert category([f(0, "minor"), f(1, "adult")]) == (2, False)
    assert category([f(1, "adult"), f(0, "not_face")]) == (0, False)
    assert category([f(1, None), f(0, "adult")]) == (2, True)
    assert category([f(0, None)]) == (None, False) and category([f(1, "unsure")]) == (None, False) and category([]) == (None, False)


# ---------------------------------------------------------------------------------------------
# In a real browser


def _browser_available() -> bool:
    return bool(shutil.which("chromium") and shutil.which("chromedriver"))


@pytest.mark.slow
@pytest.mark.skipif(not _browser_available() and not os.environ.get("CI"),
                    reason="Debian's chromium and chromedriver are installed by scripts/setup.sh --test where apt is available")
def test_reviewing_by_key_in_chromium_survives_a_reload(scanned, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from minorage.triage.review import serve

    _, case, _ = scanned
    copy = tmp_path / "case"
    shutil.copytree(case, copy)
    address: list[str] = []
    threading.Thread(target=serve, args=(copy, 0, "examiner 2", address.append), daemon=True).start()
    _wait(lambda: address)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1300,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        browser.get(address[0])
        cards = browser.find_elements(By.CSS_SELECTOR, ".card")
        first, second = cards[0].get_attribute("data-face"), cards[1].get_attribute("data-face")
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("m")  # the first face (selected on load): a minor; the selection moves on
        WebDriverWait(browser, 10).until(lambda b: "saved" in b.find_element(By.ID, "status").text)
        body.send_keys("e")  # a note on the second face, then: an adult
        browser.switch_to.active_element.send_keys("older brother?")
        browser.switch_to.active_element.send_keys("\ue00c")  # Escape
        browser.switch_to.active_element.send_keys("a")
        WebDriverWait(browser, 10).until(lambda b: "2 of" in b.find_element(By.ID, "progress").text)
        browser.refresh()
        decisions = {c.get_attribute("data-face"): c.get_attribute("data-decision") for c in browser.find_elements(By.CSS_SELECTOR, ".card")}
        assert decisions[first] == "minor" and decisions[second] == "adult"
        assert "2 of" in browser.find_element(By.ID, "progress").text
        assert browser.find_element(By.CSS_SELECTOR, f'.card[data-face="{second}"] .note').get_attribute("value") == "older brother?"
        # a face opens its photo, the photo is drawn
        browser.find_element(By.CSS_SELECTOR, f'.card[data-face="{first}"] a').click()
        WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "photo").get_attribute("naturalWidth") not in (None, "0"))
    finally:
        browser.quit()
    rows = _db(copy).execute("SELECT face_id, decision, note, reviewer FROM reviews ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [(int(first), "minor", None, "examiner 2"), (int(second), "adult", "older brother?", "examiner 2")]


def _wait(condition, seconds: float = 10.0) -> None:
    import time

    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_review_refuses_what_is_not_a_case(tmp_path, capsys):
    (tmp_path / "case.sqlite").write_bytes(b"not a database at all" * 100)
    assert main(["review", str(tmp_path), "--port", "0"]) == 2
    assert "not a minorage case database" in capsys.readouterr().err

"""The examiner's review of a scanned case in the browser: `minorage review CASE`.

A small Flask app over the case database, for one examiner on this machine:
- served on 127.0.0.1 only, every page under a random token that changes each run and is
  printed once; a request without it, or addressed to another host name (a page elsewhere
  trying to reach it through DNS rebinding), is refused;
- the faces in pages, sorted by p_minor (most probably a minor first), age, file or detection
  score, filtered by group, flag, eyes barred, review state and path text;
- a face opens its whole photo (or the video frame it came from) with every face's box drawn.
  The photo is read from the evidence, read-only, and only for a file the case records, found
  by its number in the case: no path from a request is ever opened. An image whose bytes no
  longer match the SHA-256 in the case is not shown;
- decisions (minor / adult / not a face / unsure, with a note) are appended to the case's
  `reviews` table the moment they are made, by key or by mouse; the latest per face counts,
  the earlier ones stay as the record of who decided what, when.
Nothing is cached by the browser (`Cache-Control: no-store`), so no evidence lands in its cache.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from flask import Blueprint, Flask, abort, g, jsonify, render_template, request, send_file, url_for
from werkzeug.serving import make_server

from minorage.evidence.io import ImageReadError, decode_image, open_evidence, read_capped, video_frames
from minorage.evidence.paths import display_path
from minorage.groups import ALL_GROUPS, shown_age, shown_interval, shown_probability
from minorage.triage.case import (
    DECISIONS,
    CaseError,
    add_review,
    case_info,
    connect_read_only,
    has_second_opinions,
    open_for_review,
    review_progress,
)

HOST = "127.0.0.1"
PER_PAGE, MAX_PER_PAGE = 60, 500
SHOWN_SIDE, SHOWN_SMALLEST = 1600, 640  # a photo is shown with its long side within these (pixels)
#: Sort orders: p_minor first (faces of uncalibrated models by youngest estimate), age, file, score.
SORTS = {
    "p_minor": "faces.p_minor IS NULL, faces.p_minor DESC, faces.age",
    "age": "faces.age, faces.p_minor DESC",
    "file": "files.path, faces.frame_time, faces.face",
    "score": "faces.score DESC",
}
REVIEW_STATES = ("unreviewed", "reviewed", *DECISIONS)
_FACE_COLUMNS = ("faces.id, faces.file_id, faces.face, faces.frame_time, faces.age, faces.age_group, faces.minor, faces.p_minor, "
                 "faces.age_low, faces.age_high, faces.eyes_occluded, faces.score, faces.x1, faces.y1, faces.x2, faces.y2, files.path, "
                 "decisions.decision, decisions.note, decisions.reviewer, decisions.at")


@dataclass(frozen=True)
class FaceQuery:
    """One page of the face grid, as the request's query string asks for it."""

    sort: str = "p_minor"
    group: str = ""
    flag: str = ""  # yes | no
    barred: str = ""  # yes | no
    review: str = ""  # one of REVIEW_STATES
    text: str = ""  # part of the path
    page: int = 1
    per_page: int = PER_PAGE

    @classmethod
    def from_args(cls, args) -> "FaceQuery":
        """Unknown values fall back to the defaults: a hand-edited URL never reaches SQL."""
        def choice(name: str, allowed) -> str:
            value = args.get(name, "")
            return value if value in allowed else ""

        return cls(
            sort=args.get("sort") if args.get("sort") in SORTS else "p_minor",
            group=choice("group", ALL_GROUPS), flag=choice("flag", ("yes", "no")), barred=choice("barred", ("yes", "no")),
            review=choice("review", REVIEW_STATES), text=args.get("q", "")[:200],
            page=max(1, _int(args.get("page"), 1)), per_page=min(MAX_PER_PAGE, max(1, _int(args.get("per_page"), PER_PAGE))),
        )

    def where(self) -> tuple[str, list]:
        clauses, values = [], []
        if self.group:
            clauses.append("faces.age_group = ?")
            values.append(self.group)
        if self.flag:
            clauses.append(f"faces.minor = {int(self.flag == 'yes')}")
        if self.barred:
            clauses.append(f"faces.eyes_occluded = {int(self.barred == 'yes')}")
        if self.review == "unreviewed":
            clauses.append("decisions.decision IS NULL")
        elif self.review == "reviewed":
            clauses.append("decisions.decision IS NOT NULL")
        elif self.review:
            clauses.append("decisions.decision = ?")
            values.append(self.review)
        if self.text:
            clauses.append("files.path LIKE ? ESCAPE '\\'")
            values.append("%" + self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", values

    def link(self, **changes) -> dict:
        """This query's parameters with some changed, for the page's links."""
        params = {"sort": self.sort, "group": self.group, "flag": self.flag, "barred": self.barred, "review": self.review,
                  "q": self.text, "page": self.page, "per_page": self.per_page, **changes}
        return {k: v for k, v in params.items() if v not in ("", None)}


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


_FROM = "FROM faces JOIN files ON files.id = faces.file_id LEFT JOIN decisions ON decisions.face_id = faces.id"


def _faces_from(db: sqlite3.Connection) -> tuple[str, str]:
    """The face columns and FROM clause of this case: with a second opinion's age and verdict
    where the case can hold them (a case of an earlier minorage has no such table)."""
    if not has_second_opinions(db):
        return _FACE_COLUMNS, _FROM
    return (f"{_FACE_COLUMNS}, second_opinions.age AS second_opinion_age, second_opinions.flag_lifted",
            f"{_FROM} LEFT JOIN second_opinions ON second_opinions.face_id = faces.id")


def face_page(db: sqlite3.Connection, query: FaceQuery) -> tuple[list[dict], int]:
    """(the faces of the asked page, how many faces match the filters)."""
    where, values = query.where()
    columns, tables = _faces_from(db)
    matching = db.execute(f"SELECT COUNT(*) {_FROM}{where}", values).fetchone()[0]
    rows = db.execute(f"SELECT {columns} {tables}{where} ORDER BY {SORTS[query.sort]}, faces.id LIMIT ? OFFSET ?",
                      [*values, query.per_page, (query.page - 1) * query.per_page]).fetchall()
    return [_shown(dict(r)) for r in rows], matching


def _shown(face: dict) -> dict:
    """A face with its age, interval and probability as a person reads them."""
    return {"second_opinion_age": None, "flag_lifted": None, **face, "age_shown": shown_age(face["age"], face["age_group"]),
            "interval": shown_interval(face["age_low"], face["age_high"]), "probability": shown_probability(face["p_minor"]),
            "name": os.path.basename(face["path"])}


def file_faces(db: sqlite3.Connection, file_id: int) -> list[dict]:
    columns, tables = _faces_from(db)
    return [_shown(dict(r)) for r in db.execute(f"SELECT {columns} {tables} WHERE faces.file_id = ? ORDER BY faces.frame_time, faces.face",
                                                (file_id,))]


# ---------------------------------------------------------------------------------------------
# Reading a photo from the evidence, for a file the case records


class NotShown(Exception):
    """A photo that cannot be shown; the message says why, naming the file."""


def case_file(db: sqlite3.Connection, file_id: int) -> sqlite3.Row | None:
    """The case's record of an image or video it read; None for any other number."""
    return db.execute("SELECT id, path, path_bytes, size, sha256, media, status FROM files WHERE id = ? AND media IN ('image', 'video') "
                      "AND status IN ('ok', 'no_face')", (file_id,)).fetchone()


def photo_with_boxes(file: sqlite3.Row, faces: list[dict], settings: dict, frame_time: float | None, chosen: int | None) -> bytes:
    """The file's image (or its frame at `frame_time`) as a JPEG, every face's box drawn, the
    chosen face's thicker; read-only, checked against the case's size and SHA-256."""
    path, name = os.fsdecode(file["path_bytes"]), display_path(file["path"])
    try:
        with open_evidence(path) as opened:
            if opened.info.st_size != file["size"]:
                raise NotShown(f"{name}: {opened.info.st_size:,} bytes now, {file['size']:,} when scanned: the file has changed; not shown")
            if file["media"] == "video":
                image = _frame_at(opened.file, name, settings, frame_time)
            else:
                data = read_capped(opened, settings["max_bytes"], name)
                if hashlib.sha256(data).hexdigest() != file["sha256"]:
                    raise NotShown(f"{name}: its SHA-256 differs from the case's: the file has changed; not shown")
                image = decode_image(data, settings["max_pixels"], name)
    except ImageReadError as exc:
        raise NotShown(str(exc)) from exc
    except OSError as exc:
        raise NotShown(f"{name}: {exc.strerror or exc}") from exc
    return _jpeg(_draw(image, [f for f in faces if f["frame_time"] == frame_time], chosen))


def _frame_at(f, name: str, settings: dict, frame_time: float | None) -> np.ndarray:
    """The frame the scan looked at, found again by sampling the video as the scan did."""
    for at, frame in video_frames(f, name, settings["video_every"], settings["max_video_frames"], settings["max_pixels"], threads=1):
        if frame_time is None or abs(at - frame_time) < 1e-3:
            return frame
    raise NotShown(f"{name}: no frame at {frame_time} s")


def _draw(image: np.ndarray, faces: list[dict], chosen: int | None) -> np.ndarray:
    """The photo scaled to between SHOWN_SMALLEST and SHOWN_SIDE pixels on its long side, each
    face's box and number drawn (red: flagged), the chosen face's box thicker."""
    side = max(image.shape[:2])
    scale = min(SHOWN_SIDE / side, max(1.0, SHOWN_SMALLEST / side))
    out = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    width = max(2, round(max(out.shape[:2]) / 300))
    for face in faces:
        x1, y1, x2, y2 = (int(round(face[k] * scale)) for k in ("x1", "y1", "x2", "y2"))
        colour = (0, 0, 255) if face["minor"] else (0, 200, 0)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, width * 2 if face["id"] == chosen else width)
        size = max(0.5, (x2 - x1) / 250)
        cv2.putText(out, f"{face['face'] + 1}: {face['age_shown']}", (max(2, x1 + width), max(int(24 * size), y1 - 6)),
                    cv2.FONT_HERSHEY_SIMPLEX, size, colour, max(1, width // 2), cv2.LINE_AA)
    return out


def _jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise NotShown("the photo could not be encoded for display")
    return data.tobytes()


# ---------------------------------------------------------------------------------------------
# The app


def create_app(case_dir: Path, reviewer: str, token: str, port: int) -> Flask:
    """The review app for one case, its pages under /TOKEN/; `port` is checked in the Host header."""
    connect_read_only(case_dir).close()  # a damaged or foreign case is refused before serving
    db_path = Path(case_dir)
    app = Flask(__name__, static_folder=None)
    app.config.update(case_dir=db_path, reviewer=reviewer, token=token, hosts={f"127.0.0.1:{port}", f"localhost:{port}"})
    pages = Blueprint("review", __name__, url_prefix=f"/{token}", template_folder="templates", static_folder="static")

    @app.before_request
    def _guard():
        if request.host not in app.config["hosts"]:
            abort(403)  # another host name pointing here: refused whatever the path
        prefix = request.path.split("/", 2)[1] if request.path.count("/") >= 1 else ""
        if not hmac.compare_digest(prefix.encode(), token.encode()):
            abort(404)
        if request.method == "POST" and request.headers.get("Origin") not in (None, *(f"http://{h}" for h in app.config["hosts"])):
            abort(403)

    @app.after_request
    def _headers(response):
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"  # the token never leaves in a Referer
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = ("default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
                                                       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'")
        return response

    @app.teardown_appcontext
    def _close(_exc):
        db = g.pop("db", None)
        if db is not None:
            db.close()

    def database() -> sqlite3.Connection:
        if "db" not in g:
            g.db = open_for_review(app.config["case_dir"])
        return g.db

    @pages.get("/")
    def grid():
        db = database()
        query = FaceQuery.from_args(request.args)
        faces, matching = face_page(db, query)
        reviewed, total = review_progress(db)
        pages_count = max(1, -(-matching // query.per_page))
        return render_template("review_grid.html", faces=faces, query=query, matching=matching, pages=pages_count, reviewed=reviewed,
                               total=total, info=case_info(db), groups=ALL_GROUPS, decisions=DECISIONS, sorts=SORTS,
                               review_states=REVIEW_STATES, reviewer=app.config["reviewer"])

    def recorded(file_id: int) -> sqlite3.Row:
        """A file the case read, by its number; anything else is not found."""
        file = case_file(database(), file_id)
        if file is None:
            abort(404)
        return file

    @pages.get("/file/<int:file_id>")
    def photo_page(file_id: int):
        db, file = database(), recorded(file_id)
        faces = file_faces(db, file_id)
        chosen = _int(request.args.get("face"), faces[0]["id"] if faces else 0)
        shown = next((f for f in faces if f["id"] == chosen), faces[0] if faces else None)
        reviewed, total = review_progress(db)
        back = request.args.get("back", "")
        back = back if back.startswith(f"/{token}/") else url_for("review.grid")  # only back into this app
        return render_template("review_photo.html", file=dict(file), faces=faces, shown=shown, reviewed=reviewed, total=total,
                               decisions=DECISIONS, reviewer=app.config["reviewer"], back=back)

    @pages.get("/image/<int:file_id>")
    def photo(file_id: int):
        db, file = database(), recorded(file_id)
        frame = request.args.get("t")
        try:
            data = photo_with_boxes(file, file_faces(db, file_id), _settings(db), float(frame) if frame else None, _int(request.args.get("face"), None))
        except (NotShown, ValueError) as exc:
            return str(exc), 410, {"Content-Type": "text/plain; charset=utf-8"}
        return send_file(io.BytesIO(data), mimetype="image/jpeg")

    @pages.get("/thumb/<int:face_id>")
    def thumbnail(face_id: int):
        row = database().execute("SELECT thumbnail FROM faces WHERE id = ?", (face_id,)).fetchone()
        if row is None or not row[0]:
            abort(404)
        return send_file(io.BytesIO(row[0]), mimetype="image/jpeg")

    @pages.post("/api/review")
    def review():
        body = request.get_json(silent=True) or {}
        try:
            saved = add_review(database(), int(body.get("face")), str(body.get("decision")), str(body.get("note") or "")[:2000],
                               app.config["reviewer"])
        except KeyError:
            return jsonify(error="no such face in this case"), 404
        except (TypeError, ValueError) as exc:
            return jsonify(error=str(exc)), 400
        except CaseError as exc:
            return jsonify(error=str(exc)), 503
        reviewed, total = review_progress(database())
        return jsonify(saved=saved, label=DECISIONS[saved["decision"]], reviewed=reviewed, total=total)

    app.register_blueprint(pages)
    return app


def _settings(db: sqlite3.Connection) -> dict:
    return json.loads(case_info(db)["settings"])


def _starting(environ, start_response):
    """What the server answers in the instant before the app is in place."""
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting"]


def new_token() -> str:
    return secrets.token_urlsafe(18)


def serve(case_dir: Path, port: int = 0, reviewer: str = "", announce=print) -> None:
    """Serve the review until interrupted; `announce` gets the address (with its token) once."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request (each would print the token)
    server = make_server(HOST, port, _starting, threaded=True)  # bound first: port 0 picks a free one, which the app checks
    token, bound = new_token(), server.server_port
    server.app = create_app(case_dir, reviewer, token, bound)
    announce(f"http://{HOST}:{bound}/{token}/")
    try:
        server.serve_forever()
    finally:
        server.server_close()

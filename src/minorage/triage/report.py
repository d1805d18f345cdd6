"""The review of a scanned case: `minorage report`.

HTML: one self-contained page (thumbnails inlined, no network, no external script) listing the
faces youngest estimate first, so the probable minors come first, filterable by age group, with
every file that could not be read listed below so nothing is silently missing. CSV and JSON:
the same faces (and, in JSON, every file and the case's details) for other forensic tools.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import sqlite3
from pathlib import Path
from typing import TextIO

from minorage.groups import ADULT_GROUP, AGE_GROUPS, shown_age, shown_interval, shown_probability
from minorage.triage import vics
from minorage.triage.case import DECISIONS, case_info, connect_read_only
from minorage.triage.output import spreadsheet_safe

FORMATS = ("html", "csv", "json", "vics")
FACE_COLUMNS = ("path", "sha256", "sha1", "md5", "media", "frame_time", "face", "age", "group", "minor", "p_minor", "age_low", "age_high",
                "eyes_occluded", "score", "review", "review_note", "reviewer", "reviewed_at",
                "x1", "y1", "x2", "y2", "left_eye_x", "left_eye_y", "right_eye_x", "right_eye_y")
_REVIEW_COLUMNS = {"review": "decision", "review_note": "note", "reviewer": "reviewer", "reviewed_at": "at"}
#: with a case scanned by a model with a second opinion: its age of each face it read, and whether it lifted the flag
OPINION_COLUMNS = ("second_opinion_age", "flag_lifted")
FILE_COLUMNS = ("path", "size", "sha256", "sha1", "md5", "media", "status", "error", "link_target", "frames", "faces", "scanned_at")


def faces(db: sqlite3.Connection, limit: int | None = None, thumbnails: bool = False) -> list[dict]:
    """Every face with its file's identity and its latest review, youngest estimate first
    (probable minors on top)."""
    columns = ", ".join(_select(c) for c in face_columns(db))
    opinions = " LEFT JOIN second_opinions ON second_opinions.face_id = faces.id" if _with_second_opinion(db) else ""
    query = (f"SELECT {columns}{', faces.thumbnail' if thumbnails else ''} FROM faces JOIN files ON files.id = faces.file_id "
             f"LEFT JOIN decisions ON decisions.face_id = faces.id{opinions} ORDER BY faces.age, files.path, faces.frame_time, faces.face")
    rows = db.execute(query + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
    return [dict(r) for r in rows]


def face_columns(db: sqlite3.Connection) -> tuple[str, ...]:
    """The face export's columns: a second opinion's too where the case was scanned with one."""
    return FACE_COLUMNS + (OPINION_COLUMNS if _with_second_opinion(db) else ())


def _with_second_opinion(db: sqlite3.Connection) -> bool:
    return "second_opinion" in json.loads(case_info(db).get("settings", "{}"))


def _select(column: str) -> str:
    """A face export column as the case stores it (the group under the name `predict` gives it)."""
    if column in OPINION_COLUMNS:
        return f"second_opinions.{'age' if column == 'second_opinion_age' else column} AS {column}"
    if column in ("path", "sha256", "sha1", "md5", "media"):
        return f"files.{column}"
    if column in _REVIEW_COLUMNS:
        return f"decisions.{_REVIEW_COLUMNS[column]} AS {column}"
    return 'faces.age_group AS "group"' if column == "group" else f"faces.{column}"


def files(db: sqlite3.Connection, problems_only: bool = False) -> list[dict]:
    where = " WHERE status NOT IN ('ok', 'no_face', 'folder', 'link')" if problems_only else ""
    return [dict(r) for r in db.execute(f"SELECT {', '.join(FILE_COLUMNS)} FROM files{where} ORDER BY path")]


def counts(db: sqlite3.Connection) -> dict:
    return {
        "files": db.execute("SELECT COUNT(*) FROM files").fetchone()[0],
        "faces": db.execute("SELECT COUNT(*) FROM faces").fetchone()[0],
        "minors": db.execute("SELECT COUNT(*) FROM faces WHERE minor = 1").fetchone()[0],
        "statuses": dict(db.execute("SELECT status, COUNT(*) FROM files GROUP BY status ORDER BY status").fetchall()),
        "groups": dict(db.execute("SELECT age_group, COUNT(*) FROM faces GROUP BY age_group").fetchall()),
        "reviews": dict(db.execute("SELECT decision, COUNT(*) FROM decisions GROUP BY decision ORDER BY decision").fetchall()),
    }


def write_report(case_dir: Path, fmt: str, stream: TextIO, max_faces: int | None = None) -> int:
    """Write the case in one format; returns the number of faces written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    db = connect_read_only(case_dir)
    try:
        if fmt == "csv":
            rows = faces(db, max_faces)
            writer = csv.DictWriter(stream, face_columns(db), lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
        elif fmt == "vics":
            feed, n = vics.document(db)
            json.dump(feed, stream, indent=1)
            stream.write("\n")
            return n
        elif fmt == "json":
            rows = faces(db, max_faces)
            json.dump({"case": case_info(db), "counts": counts(db), "faces": rows, "files": files(db)}, stream, indent=1)
            stream.write("\n")
        else:
            rows = faces(db, max_faces, thumbnails=True)
            stream.write(render_html(case_info(db), counts(db), rows, files(db, problems_only=True)))
        return len(rows)
    finally:
        db.close()


# ---------------------------------------------------------------------------------------------
# The HTML page

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:middle}
tr.minor td.age{color:#b00;font-weight:bold}img{width:72px;height:72px;border-radius:4px}
.filters button{margin:0 4px 8px 0;padding:4px 10px;border:1px solid #888;background:#f4f4f4;border-radius:4px;cursor:pointer}
.filters button.on{background:#333;color:#fff}.path{font-family:monospace;font-size:12px;word-break:break-all}
.meta{font-size:13px;color:#555}
"""

_SCRIPT = """
function show(group){
  document.querySelectorAll('.filters button').forEach(b=>b.classList.toggle('on',b.dataset.group===group));
  let shown=0;
  document.querySelectorAll('#faces tbody tr').forEach(r=>{
    const on=group==='all'||r.dataset.group===group||(group==='minors'&&r.dataset.minor==='1');
    r.hidden=!on; if(on) shown++;});
  document.getElementById('shown').textContent=shown;
}
"""


def render_html(info: dict, totals: dict, rows: list[dict], problems: list[dict]) -> str:
    """The review page, self-contained."""
    esc = html.escape
    groups = [name for name, _, _ in AGE_GROUPS] + [ADULT_GROUP]
    buttons = "".join(f'<button data-group="{g}" onclick="show(\'{g}\')">{esc(label)}</button>'
                      for g, label in [("all", "all faces"), ("minors", "probable minors")] + [(g, f"{g} ({totals['groups'].get(g, 0)})") for g in groups])
    body = "".join(_face_row(r) for r in rows)
    problem_rows = "".join(f"<tr><td class=path>{esc(p['path'])}</td><td>{esc(p['status'])}</td><td>{esc(p['error'] or '')}</td></tr>" for p in problems)
    shown_note = f"{len(rows)} of {totals['faces']}" if len(rows) < totals["faces"] else str(totals["faces"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>minorage case report</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<style>{_STYLE}</style></head><body>
<h1>minorage case report</h1>
<p class=meta>Model {esc(info.get('model', '?'))} (SHA-256 {esc(info.get('model_sha256', '?')[:16])}…), minor flag:
{esc(info.get('flag_rule', '?'))}; minorage {esc(info.get('minorage_version', '?'))}; sources {esc(', '.join(json.loads(info.get('sources', '[]'))))};
started {esc(info.get('started', '?'))}; access times preserved: {esc(info.get('atime_preserved', '?'))}.</p>
<p>{totals['files']} files, {totals['faces']} faces, <b>{totals['minors']} flagged as probable minors</b>. Files by status:
{esc(', '.join(f'{k} {v}' for k, v in totals['statuses'].items()))}. Reviewed: {sum(totals['reviews'].values())}
({esc(', '.join(f'{DECISIONS[k]} {v}' for k, v in totals['reviews'].items())) or 'none yet'}). Estimates are leads for a human reviewer, not findings.</p>
<div class=filters>{buttons}</div>
<p class=meta>Showing <span id=shown>{len(rows)}</span> faces ({shown_note} in this page), youngest estimate first.</p>
<table id=faces><thead><tr><th>face</th><th>age</th><th>90 % interval</th><th>group</th><th>minor?</th><th>p_minor</th><th>eyes barred</th>
<th>score</th><th>review</th><th>file</th><th>frame (s)</th></tr></thead>
<tbody>{body}</tbody></table>
<h2>Files not read ({len(problems)})</h2>
<table><thead><tr><th>file</th><th>status</th><th>why</th></tr></thead><tbody>{problem_rows}</tbody></table>
<script>{_SCRIPT}</script></body></html>
"""


def _face_row(r: dict) -> str:
    esc = html.escape
    thumb = base64.b64encode(r["thumbnail"] or b"").decode()
    frame = "" if r["frame_time"] is None else f"{r['frame_time']:.1f}"
    return (f'<tr class="{"minor" if r["minor"] else ""}" data-group="{esc(r["group"])}" data-minor="{r["minor"]}">'
            f'<td><img alt="face" src="data:image/jpeg;base64,{thumb}"></td><td class=age>{shown_age(r["age"], r["group"])}</td>'
            f'<td>{shown_interval(r["age_low"], r["age_high"])}</td><td>{esc(r["group"])}</td>'
            f'<td>{"yes" if r["minor"] else "no"}</td><td>{shown_probability(r["p_minor"])}</td><td>{"yes" if r["eyes_occluded"] else "no"}</td>'
            f'<td>{r["score"]:.2f}</td><td>{_review_cell(r)}</td>'
            f'<td class=path>{esc(r["path"])}<br><span class=meta>SHA-256 {esc((r["sha256"] or "")[:16])}…</span></td><td>{frame}</td></tr>')


def _review_cell(r: dict) -> str:
    if not r["review"]:
        return '<span class=meta>not reviewed</span>'
    note = f"<br><span class=meta>{html.escape(r['review_note'])}</span>" if r["review_note"] else ""
    return f"<b>{html.escape(DECISIONS[r['review']])}</b> <span class=meta>({html.escape(r['reviewer'])}, {html.escape(r['reviewed_at'])})</span>{note}"


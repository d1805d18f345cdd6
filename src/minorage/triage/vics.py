"""A case as Project VIC's VICS 2.0 JSON: the interchange that forensic suites (Griffeye Analyze
DI, IPED) and national hash sets (Project VIC, CAID) read.

The document is an OData feed: `@odata.context` names the ProjectVic data model, `value` lists
one Media entry per image or video the scan read, keyed by its MD5 and SHA-1 (upper-case hex,
as the hash sets write them), with its size and every place it was found (`MediaFiles`:
`FileName`, `FilePath`). What minorage saw goes where the model has room for an examiner's
words: `Comments` (each face's estimated age, group and flag, and the model that made them) and
`Tags`.

`Category` follows Project VIC's categories (0 non-pertinent, 1 child abuse material, 2 child
exploitive / age difficult, 3 computer-generated, 4 comparison). An age estimate says who is
pictured, never what is done, so minorage never writes 1; `category` maps a file's faces:
- any face an examiner reviewed as a minor: 2;
- every face reviewed, each as an adult or not a face: 0;
- otherwise, any face flagged "probably a minor" and not reviewed otherwise: 2, tagged
  `minorage: category from the flag (not reviewed)`, so a suite can sort the examiner's own
  decisions from the model's;
- otherwise (a face marked unsure, or no face found): null, uncategorised.
Examiners confirm or change the category in their own tool.
"""

from __future__ import annotations

import os
import sqlite3

from minorage.groups import shown_age, shown_interval, shown_probability
from minorage.triage.case import DECISIONS, case_info

CONTEXT = "http://github.com/VICSDATAMODEL/ProjectVic/DataModels/2.0.xml/Default/$metadata#Media"
TAG_MINOR, TAG_FACES, TAG_NO_FACE = "minorage: probable minor", "minorage: faces", "minorage: no face"
TAG_FROM_FLAG, TAG_REVIEWED = "minorage: category from the flag (not reviewed)", "minorage: reviewed"
EXPLOITIVE_OR_AGE_DIFFICULT, NON_PERTINENT = 2, 0


def document(db: sqlite3.Connection) -> tuple[dict, int]:
    """(the VICS document, the number of faces in it) for a case opened read-only."""
    info = case_info(db)
    by_hash: dict[tuple[str, str], dict] = {}
    faces_written = 0
    for file in db.execute("SELECT id, path, size, sha1, md5, status FROM files WHERE media IN ('image', 'video') "
                           "AND status IN ('ok', 'no_face') AND sha1 IS NOT NULL ORDER BY path"):
        faces = db.execute("SELECT frame_time, face, age, age_group, minor, p_minor, age_low, age_high, decision, reviewer FROM faces "
                           "LEFT JOIN decisions ON decisions.face_id = faces.id WHERE file_id = ? ORDER BY frame_time, face",
                           (file["id"],)).fetchall()
        faces_written += len(faces)
        key = (file["md5"].upper(), file["sha1"].upper())
        media = by_hash.setdefault(key, _media(len(by_hash) + 1, key, file["size"], faces, info))
        folder, name = os.path.split(file["path"])
        media["MediaFiles"].append({"FileName": name, "FilePath": folder})
    return {"@odata.context": CONTEXT, "value": list(by_hash.values())}, faces_written


def category(faces: list) -> tuple[int | None, bool]:
    """(the VICS category of a file's faces, whether it comes from the flag rather than a review)."""
    decisions = [f["decision"] for f in faces]
    if "minor" in decisions:
        return EXPLOITIVE_OR_AGE_DIFFICULT, False
    if faces and all(d in ("adult", "not_face") for d in decisions):
        return NON_PERTINENT, False
    if any(f["minor"] and f["decision"] is None for f in faces):
        return EXPLOITIVE_OR_AGE_DIFFICULT, True
    return None, False


def _media(media_id: int, hashes: tuple[str, str], size: int, faces: list, info: dict) -> dict:
    minor = any(f["minor"] for f in faces)
    tags = [TAG_MINOR] if minor else []
    tags.append(TAG_FACES if faces else TAG_NO_FACE)
    said, from_flag = category(faces)
    tags += [TAG_FROM_FLAG] if from_flag else [TAG_REVIEWED] if any(f["decision"] for f in faces) else []
    return {
        "MediaID": media_id,
        "Category": said,
        "MD5": hashes[0],
        "SHA1": hashes[1],
        "MediaSize": size,
        "Comments": _comment(faces, info),
        "Tags": tags,
        "MediaFiles": [],
    }


def _comment(faces: list, info: dict) -> str:
    said = "; ".join(_face(f) for f in faces) or "no face found"
    return f"minorage {info.get('minorage_version', '')}, model {info.get('model', '')} (flag: {info.get('flag_rule', '')}): {said}"


def _face(face: sqlite3.Row) -> str:
    at = f" at {face['frame_time']:.1f} s" if face["frame_time"] is not None else ""
    interval = f", 90 % interval {shown_interval(face['age_low'], face['age_high'])}, p_minor {shown_probability(face['p_minor'])}" if face["p_minor"] is not None else ""
    review = f", reviewed as {DECISIONS[face['decision']]} by {face['reviewer']}" if face["decision"] else ""
    return (f"face {face['face'] + 1}{at}: age {shown_age(face['age'], face['age_group'])} ({face['age_group']}){interval}"
            f"{', probable minor' if face['minor'] else ''}{review}")

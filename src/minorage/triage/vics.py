"""A case as Project VIC's VICS 2.0 JSON: the interchange that forensic suites (Griffeye Analyze
DI, IPED) and national hash sets (Project VIC, CAID) read.

The document is an OData feed: `@odata.context` names the ProjectVic data model, `value` lists
one Media entry per image or video the scan read, keyed by its MD5 and SHA-1 (upper-case hex,
as the hash sets write them), with its size and every place it was found (`MediaFiles`:
`FileName`, `FilePath`). What minorage saw goes where the model has room for an examiner's
words: `Comments` (each face's estimated age, group and flag, and the model that made them) and
`Tags`.

`Category` is left empty (`null`, uncategorised). Why: a VICS category says what a picture
shows, which an age estimate does not; a face flagged "probably a minor" is a reason to look
first, not a classification. Examiners categorise in their own tool, with minorage's tags to
sort by.
"""

from __future__ import annotations

import os
import sqlite3

from minorage.groups import shown_age
from minorage.triage.case import case_info

CONTEXT = "http://github.com/VICSDATAMODEL/ProjectVic/DataModels/2.0.xml/Default/$metadata#Media"
TAG_MINOR, TAG_FACES, TAG_NO_FACE = "minorage: probable minor", "minorage: faces", "minorage: no face"


def document(db: sqlite3.Connection) -> tuple[dict, int]:
    """(the VICS document, the number of faces in it) for a case opened read-only."""
    info = case_info(db)
    by_hash: dict[tuple[str, str], dict] = {}
    faces_written = 0
    for file in db.execute("SELECT id, path, size, sha1, md5, status FROM files WHERE media IN ('image', 'video') "
                           "AND status IN ('ok', 'no_face') AND sha1 IS NOT NULL ORDER BY path"):
        faces = db.execute("SELECT frame_time, face, age, age_group, minor FROM faces WHERE file_id = ? ORDER BY frame_time, face",
                           (file["id"],)).fetchall()
        faces_written += len(faces)
        key = (file["md5"].upper(), file["sha1"].upper())
        media = by_hash.setdefault(key, _media(len(by_hash) + 1, key, file["size"], faces, info))
        folder, name = os.path.split(file["path"])
        media["MediaFiles"].append({"FileName": name, "FilePath": folder})
    return {"@odata.context": CONTEXT, "value": list(by_hash.values())}, faces_written


def _media(media_id: int, hashes: tuple[str, str], size: int, faces: list, info: dict) -> dict:
    minor = any(f["minor"] for f in faces)
    tags = [TAG_MINOR] if minor else []
    tags.append(TAG_FACES if faces else TAG_NO_FACE)
    return {
        "MediaID": media_id,
        "Category": None,
        "MD5": hashes[0],
        "SHA1": hashes[1],
        "MediaSize": size,
        "Comments": _comment(faces, info),
        "Tags": tags,
        "MediaFiles": [],
    }


def _comment(faces: list, info: dict) -> str:
    said = "; ".join(_face(f) for f in faces) or "no face found"
    return (f"minorage {info.get('minorage_version', '')}, model {info.get('model', '')} (flag: estimate below "
            f"{info.get('minor_below', '')}): {said}")


def _face(face: sqlite3.Row) -> str:
    at = f" at {face['frame_time']:.1f} s" if face["frame_time"] is not None else ""
    return f"face {face['face'] + 1}{at}: age {shown_age(face['age'], face['age_group'])} ({face['age_group']}){', probable minor' if face['minor'] else ''}"

"""The one path from an image to its faces' ages that `predict` and `scan` share."""

from __future__ import annotations

import cv2
import numpy as np

from minorage import AgeEstimator
from minorage.faces.detection import FaceDetector
from minorage.triage.pipeline import Reading, ages_by_item, find_faces, frame_crop


def test_one_pass_for_several_files_gives_each_file_its_own_ages(some_faces):
    """Faces of several real photos aged together come back file by file, as each alone would,
    and a file without faces gets an empty array in its place."""
    estimator, detector = AgeEstimator.from_pretrained(), FaceDetector()
    per_file = [[f.crop for f in find_faces(cv2.imread(str(p)), detector, estimator.framing)] for p in some_faces[:4]]
    per_file.insert(2, [])
    together = ages_by_item(per_file, estimator)
    assert [len(a) for a in together] == [len(c) for c in per_file] and len(together[2]) == 0
    for crops, ages in zip(per_file, together):
        if crops:
            np.testing.assert_allclose(ages, estimator.predict(np.stack(crops)), atol=1e-4)


def test_a_crop_is_framed_on_its_face_or_taken_whole(some_faces):
    """A real face photo is framed on the face found in it; a blank picture has no face and is
    taken whole, and says so."""
    estimator, detector = AgeEstimator.from_pretrained(), FaceDetector()
    found, how = frame_crop(cv2.imread(str(some_faces[5])), detector, estimator.framing, 1.0)
    assert how == "detected" and found.face is not None and found.crop.shape == (64, 64, 3)
    blank, how = frame_crop(np.full((120, 120, 3), 128, np.uint8), detector, estimator.framing, 1.0)
    assert how == "whole_image" and blank.face is None and blank.crop.shape == (64, 64, 3)


def test_the_verdict_is_the_group_and_the_flag_and_the_ceiling_an_adult():
    """An estimate's group and flag; at the top of a model that reports [0, 25] ("25 or older") the
    face is an adult, shown as 25+, never in the 18-25 group; a model with a wider range is read
    as it is."""
    capped = Reading(17.5, 25.0)
    assert capped.verdict(12.0) == {"group": "11-15", "minor": True}
    assert capped.verdict(17.6) == {"group": "18-25", "minor": False}
    assert Reading(18.5, 25.0).verdict(17.6) == {"group": "18-25", "minor": True}
    assert capped.verdict(25.0) == {"group": "26+", "minor": False} and capped.shown(25.0) == "25+"
    assert capped.verdict(24.9) == {"group": "18-25", "minor": False} and capped.shown(24.9) == "24.9"
    wide = Reading.of(AgeEstimator.from_pretrained("imdb"))
    assert wide.ceiling is None and wide.verdict(25.0)["group"] == "18-25" and wide.shown(40.0) == "40.0"
    assert Reading.of(AgeEstimator.from_pretrained()).ceiling == 25.0


def test_adults_are_shown_as_adults(capsys, utkface_files):
    """Real photos of people aged 50 and over through the shipped model: every estimate at its
    ceiling (most of them) is in the 26+ group, and none is called 18-25 at 25."""
    from minorage.cli import main

    old = [str(f) for f in utkface_files if int(f.name.split("_")[0]) >= 50][::200][:8]
    assert main(["predict", "--crops", "--format", "json", *old]) == 0
    rows = __import__("json").loads(capsys.readouterr().out)
    at_top = [r for r in rows if r["age"] >= 25.0]
    assert len(at_top) >= 4 and all(r["group"] == "26+" and not r["minor"] for r in at_top)

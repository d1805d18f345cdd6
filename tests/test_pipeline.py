"""The one path from an image to its faces' ages that `predict` and `scan` share."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from minorage import AgeEstimator
from minorage.faces.detection import FaceDetector
from minorage.triage.pipeline import Reading, ages_by_item, find_faces, frame_crop


def test_one_pass_for_several_files_gives_each_file_its_own_ages(some_faces):
    """Faces of several real photos aged together come back file by file, as each alone would,
    and a file without faces gets an empty array in its place."""
    estimator, detector = AgeEstimator.from_pretrained(), FaceDetector()
    per_file = [find_faces(cv2.imread(str(p)), detector, estimator.framings) for p in some_faces[:4]]
    per_file.insert(2, [])
    together = ages_by_item(per_file, estimator)
    assert [len(a) for a in together] == [len(c) for c in per_file] and len(together[2]) == 0
    for faces, ages in zip(per_file, together):
        if faces:
            alone = estimator.predict(np.stack([f.crop for f in faces]), edge_filled=np.array([f.edge_filled for f in faces]))
            np.testing.assert_allclose(ages, alone, atol=1e-4)


def test_a_crop_is_framed_on_its_face_or_taken_whole(some_faces):
    """A real face photo is framed on the face found in it; a blank picture has no face and is
    taken whole, and says so."""
    estimator, detector = AgeEstimator.from_pretrained(), FaceDetector()
    found, how = frame_crop(cv2.imread(str(some_faces[5])), detector, estimator.framings, 1.0)
    assert how == "detected" and found.face is not None and found.crop.shape == (64, 64, 3)
    blank, how = frame_crop(np.full((120, 120, 3), 128, np.uint8), detector, estimator.framings, 1.0)
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


def test_a_calibrated_verdict_carries_p_minor_and_the_interval_of_its_kind_of_face():
    """By hand: normal faces' p_minor is 0.5 at 17.5 and each true age a's estimates lie in
    [a-2, a+2], so an estimate of 10 is a true 8-12; barred faces' ranges are [a-4, a+4]. A
    flag stated as a probability follows p_minor, and needs a calibration."""
    import math

    from minorage.groups import flag_rule, shown_interval, shown_probability
    from minorage.model.calibration import Calibration, Calibrations

    ages = range(26)
    normal = Calibration(17.5, -1.0, tuple(a - 2.0 for a in ages), tuple(a + 2.0 for a in ages))
    barred = Calibration(17.5 * 0.5, -0.5, tuple(a - 4.0 for a in ages), tuple(a + 4.0 for a in ages))
    reading = Reading(17.5, 25.0, Calibrations(normal, barred, {}))
    said = reading.verdict(10.0)
    assert said == {"group": "6-10", "minor": True, "p_minor": round(1 / (1 + math.exp(-7.5)), 4), "age_low": 8.0, "age_high": 12.0}
    assert reading.verdict(10.0, eyes_barred=True)["age_low"] == 6.0 and reading.verdict(10.0, eyes_barred=True)["age_high"] == 14.0
    assert reading.verdict(17.5)["p_minor"] == 0.5 and reading.verdict(25.0)["age_high"] == 25.0
    assert shown_interval(23.0, 26.0) == "23+" and shown_interval(19.0, 25.0) == "19-25" and shown_interval(None, None) == ""
    assert shown_probability(0.001) == "<0.01" and shown_probability(0.5) == "0.50" and shown_probability(None) == ""
    by_p = Reading(17.5, 25.0, Calibrations(normal, barred, {}), minor_above=0.9)
    assert by_p.verdict(15.0)["minor"] is True and by_p.verdict(17.0)["minor"] is False  # p 0.92 and 0.62
    assert flag_rule(17.5, None) == "estimate below 17.5 years" and flag_rule(17.5, 0.9) == "p_minor above 0.9"
    with pytest.raises(ValueError, match="needs a model calibrated"):
        Reading(17.5, 25.0, None, minor_above=0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        Reading(17.5, 25.0, Calibrations(normal, barred, {}), minor_above=1.5)

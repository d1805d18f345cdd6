"""A second network's opinion on faces with open eyes: dlib's chip alignment on real faces, and
the veto of `scripts/second_opinion_in_scenes.py` by hand-computed examples."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from minorage.faces.detection import FaceDetector, main_face
from minorage.faces.framing import TEMPLATE_POINTS, similarity, template_chip

SCRIPTS = Path(__file__).parents[1] / "scripts"


def _script():
    sys.path.insert(0, str(SCRIPTS))  # it reads the measures of routes_in_scenes.py beside it
    try:
        spec = importlib.util.spec_from_file_location("second_opinion_in_scenes", SCRIPTS / "second_opinion_in_scenes.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPTS))
    return module


def test_the_similarity_is_found_by_hand():
    """Points turned a quarter turn, doubled and moved by (5, -3) give that transform back."""
    src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    dst = src @ np.array([[0.0, 2.0], [-2.0, 0.0]]) + [5.0, -3.0]  # (x, y) -> (-2y + 5, 2x - 3)
    np.testing.assert_allclose(similarity(src, dst), [[0.0, -2.0, 5.0], [2.0, 0.0, -3.0]], atol=1e-9)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def _chip_of(image: np.ndarray, detector: FaceDetector) -> np.ndarray:
    face = main_face(detector.detect(image), image.shape)
    assert face is not None
    return template_chip(image, face.points)


def _blurred(chip: np.ndarray) -> np.ndarray:
    """A chip with its fine texture smoothed away, so a pixel's shift does not count as a change."""
    return cv2.GaussianBlur(chip.astype(float), (0, 0), 2)


def test_a_tilted_face_gives_the_chip_of_the_upright_one(some_faces, detector):
    """Real faces in a photo twice as large (edge pixels around them) and the same photo turned
    by 20 degrees: the two chips (smoothed) differ far less than the upright chip differs from a
    turned copy of itself, since the eyes and nose go on the template either way."""
    for path in some_faces[:6]:
        photo = cv2.imread(str(path))
        h, w = photo.shape[:2]
        photo = cv2.copyMakeBorder(photo, h // 2, h // 2, w // 2, w // 2, cv2.BORDER_REPLICATE)
        turn = cv2.getRotationMatrix2D((photo.shape[1] / 2, photo.shape[0] / 2), 20, 1.0)
        tilted = cv2.warpAffine(photo, turn, photo.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)
        upright, from_tilted = _blurred(_chip_of(photo, detector)), _blurred(_chip_of(tilted, detector))
        self_turned = cv2.warpAffine(upright, cv2.getRotationMatrix2D((32, 32), 20, 1.0), (64, 64), borderMode=cv2.BORDER_REPLICATE)
        assert upright.shape == (64, 64, 3)
        assert np.abs(upright - from_tilted).mean() < 0.6 * np.abs(upright - self_turned).mean(), path.name


def test_a_large_face_is_shrunk_without_aliasing(some_faces, detector):
    """Real faces at four times their size give nearly the chips of the faces as they are, where
    sampling the large photo straight onto the 64 px chip (no shrinking first) does not."""
    for path in some_faces[:6]:
        photo = cv2.imread(str(path))
        large = cv2.resize(photo, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
        face = main_face(detector.detect(photo), photo.shape)
        chip, from_large = template_chip(photo, face.points).astype(float), template_chip(large, face.points * 4).astype(float)
        straight = similarity(face.points[:3] * 4, (0.2 + TEMPLATE_POINTS) / 1.4 * 64)
        sampled = cv2.warpAffine(large, straight, (64, 64), flags=cv2.INTER_LINEAR).astype(float)
        assert np.abs(chip - from_large).mean() < 0.25 * np.abs(chip - sampled).mean(), path.name


def _read(age, teacher, barred, flag=17.5):
    n = len(age)
    return {"found": np.ones(n, bool), "barred": np.array(barred, bool), "age": np.array(age, float),
            "flag": np.full(n, flag), "teacher": np.array(teacher, float)}


def test_the_veto_lifts_a_flag_only_on_open_eyes():
    """By hand: four faces the model calls 16. The network says 35 of the first two and 20 of
    the others; the second is taken as barred, so only the first's flag is lifted at a veto of 30,
    and none at 40."""
    script = _script()
    read = _read([16, 16, 16, 16], [35, 35, 20, 20], [False, True, False, True])
    assert script.flagged(read, 30.0).tolist() == [False, True, True, True]
    assert script.flagged(read, 40.0).tolist() == [True, True, True, True]
    assert script.flagged(read, np.inf).tolist() == [True, True, True, True]


def test_the_raise_matches_the_minors_the_model_flags_alone():
    """By hand, three minors: the model flags two (16.0, 17.0; 18.2 not). A veto at 30 lifts the
    first (the network says 31) and the raised flag must reach the third: 18.2 < 17.5 + 0.8. The
    raise does not reach faces taken as barred."""
    script = _script()
    read = _read([16.0, 17.0, 18.2], [31, 20, 20], [False, False, False])
    minors = np.ones(3, bool)
    assert script.matched_raise(read, minors, 30.0) == 0.8
    assert script.matched_raise(read, minors, np.inf) == 0.0
    barred = _read([16.0, 17.0, 18.2], [31, 20, 20], [False, False, True])
    assert script.matched_raise(barred, minors, 30.0) == 3.0  # never matched: the last of the raises

"""MTCNN and the paper's eye bar (§3.2) on real UTKFace faces."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest

from minorage.config import DetectorConfig
from minorage.faces.detection import FaceDetector, iou, main_face, nms
from minorage.faces.occlusion import eye_bar, occlude


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def detected(detector, utkface_files):
    """240 real photos spread over all ages, each with its main face (or None)."""
    photos = utkface_files[:: len(utkface_files) // 240][:240]
    out = []
    for path in photos:
        image = cv2.imread(str(path))
        out.append((image, main_face(detector.detect(image), image.shape)))
    return out


@pytest.mark.slow
def test_finds_the_face_in_almost_every_photo(detected):
    found = sum(face is not None for _, face in detected)
    assert found >= 0.97 * len(detected)


@pytest.mark.slow
def test_eye_points_are_plausible(detected):
    """On UTKFace's aligned crops the eyes sit level in the upper half, left eye on the left."""
    for image, face in detected:
        if face is None:
            continue
        (lx, ly), (rx, ry) = face.eyes
        assert lx < rx
        assert face.box[1] < ly < (face.box[1] + face.box[3]) / 2 + 0.1 * face.height


@pytest.mark.slow
def test_bar_covers_both_eyes(detected):
    hits = total = 0
    for image, face in detected:
        if face is None:
            continue
        barred, bar = occlude(image, face)
        total += 1
        inside = all(bar.contains(eye) for eye in face.eyes)
        black = all(not barred[int(round(y)), int(round(x))].any() for x, y in face.eyes if 0 <= round(y) < image.shape[0] and 0 <= round(x) < image.shape[1])
        hits += inside and black
    assert total >= 200 and hits >= 0.97 * total


@pytest.mark.slow
def test_bar_geometry_follows_the_paper(detected):
    for image, face in detected:
        if face is None:
            continue
        bar = eye_bar(face)
        assert abs(bar.width - 0.95 * face.width) <= 1 and abs(bar.height - 0.25 * face.height) <= 1
        (lx, ly), (rx, ry) = face.eyes
        assert bar.angle == pytest.approx(math.degrees(math.atan2(ry - ly, rx - lx)), abs=1e-6)
        assert bar.center == pytest.approx(((lx + rx) / 2, (ly + ry) / 2))


@pytest.mark.slow
def test_bar_is_pure_black_and_touches_nothing_else(detected):
    image, face = next((i, f) for i, f in detected if f is not None)
    barred, bar = occlude(image, face)
    changed = np.any(barred != image, axis=2)
    assert np.all(barred[changed] == 0)  # no blending: changed pixels are black
    inside = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(inside, [np.round(bar.corners()).astype(np.int32)], 1)
    inside = cv2.dilate(inside, np.ones((3, 3), np.uint8))  # 1 px of rounding at the edges
    assert not np.any(changed & (inside == 0))
    black_area = np.count_nonzero(np.all(barred == 0, axis=2) & (inside == 1))
    assert black_area == pytest.approx(bar.width * bar.height, rel=0.05)
    assert np.any(image != barred) and image is not barred


@pytest.mark.slow
@pytest.mark.parametrize("turn", [-20, 20])
def test_bar_turns_with_a_rotated_face(detector, detected, turn):
    """A face turned by +-20 degrees gets a bar turned by the same angle."""
    diffs = []
    for image, face in [d for d in detected if d[1] is not None][:20]:
        h, w = image.shape[:2]
        # cv2 turns counter-clockwise on screen for positive angles; image y points down
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), turn, 1.0)
        rotated = cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)
        turned = main_face(detector.detect(rotated), rotated.shape)
        if turned is None:
            continue
        diffs.append(eye_bar(turned).angle - eye_bar(face).angle)
    assert len(diffs) >= 15
    assert np.median(diffs) == pytest.approx(-turn, abs=3)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # YuNet's rows of NaN on a tiny image are dropped, not computed on
def test_images_without_faces(detector):
    rng = np.random.default_rng(0)
    flat = np.full((240, 320, 3), 128, np.uint8)
    noise = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    squares = (np.indices((240, 320)).sum(axis=0) // 20 % 2 * 255).astype(np.uint8)
    texture = cv2.cvtColor(squares, cv2.COLOR_GRAY2BGR)
    tiny = np.zeros((5, 7, 3), np.uint8)
    for image in (flat, noise, texture, tiny):
        assert detector.detect(image) == []


def test_thresholds_and_min_size_are_options(some_faces):
    """Stricter scores find fewer faces; a smallest size above the face finds none, whichever
    detector proposes it (P-Net's pyramid or YuNet)."""
    image = cv2.imread(str(some_faces[0]))
    strict = FaceDetector(DetectorConfig(thresholds=(0.99, 0.999, 0.99999)))
    huge = FaceDetector(DetectorConfig(min_face_size=400, crop_padding=0))
    assert len(strict.detect(image)) <= 1 and huge.detect(image) == []
    assert FaceDetector(DetectorConfig(weights="yunet", min_face_size=400, crop_padding=0)).detect(image) == []
    assert len(FaceDetector(DetectorConfig(weights="yunet", crop_padding=0)).detect(image)) == 1
    assert FaceDetector(DetectorConfig(weights="yunet", yunet_threshold=1.0, crop_padding=0)).detect(image) == []



def test_yunet_on_a_smaller_image_reports_in_the_image_s_pixels(some_faces):
    """With `yunet_face_px`, YuNet looks at a scaled copy (never an enlarged one) and its boxes
    come back in the photo's own pixels: a real face at 0.5 is where it is at full size."""
    from minorage.faces.yunet import YuNet

    assert DetectorConfig(min_face_size=32, yunet_face_px=20).yunet_scale == pytest.approx(0.625)
    assert DetectorConfig(min_face_size=20, yunet_face_px=20).yunet_scale == 1.0
    assert DetectorConfig(min_face_size=10, yunet_face_px=20).yunet_scale == 1.0
    assert DetectorConfig(min_face_size=32).yunet_scale == 1.0
    image = cv2.resize(cv2.imread(str(some_faces[3])), (400, 400))
    whole, half = YuNet().propose(image), YuNet(scale=0.5).propose(image)
    assert len(whole) >= 1 and len(half) >= 1
    assert iou(half[:1, :4], whole[0, :4])[0] > 0.8

def test_yunet_finds_what_opencv_finds_in_the_same_file(some_faces):
    """YuNet runs in ONNX Runtime and its outputs are decoded here: on real faces in photos of
    several sizes and shapes (none a multiple of the network's stride), it must find what
    OpenCV's own `FaceDetectorYN` finds with the same shipped file, at the same places."""
    from minorage.faces.yunet import MODEL_FILE, YuNet

    faces = [cv2.imread(str(path)) for path in some_faces[:6]]
    ours = YuNet(0.5)
    for (w, h), side in (((641, 479), 150), ((470, 650), 110), ((1003, 301), 140), ((200, 200), 200)):
        canvas = np.full((h, w, 3), 90, np.uint8)
        slots = [(x, y) for y in range(0, h - side + 1, side + 10) for x in range(0, w - side + 1, side + 10)]
        for (x, y), face in zip(slots, faces):
            canvas[y : y + side, x : x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
        opencv = cv2.FaceDetectorYN.create(str(MODEL_FILE), "", (w, h), 0.5, 0.3, 5000).detect(canvas)[1]
        expected = opencv[np.argsort(-opencv[:, 14])].astype(np.float64)
        expected[:, 2:4] += expected[:, :2]
        found = ours.propose(canvas)
        assert len(found) == len(expected) >= min(len(slots), len(faces)) - 1
        np.testing.assert_allclose(found, expected, atol=1e-2)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], float)
    keep = nms(boxes, np.array([0.5, 0.9, 0.7]), 0.5)
    assert keep.tolist() == [1, 2]


def test_nms_is_greedy_suppression_by_iou():
    """OpenCV's suppression, which `nms` uses for IoU, keeps exactly what the greedy rule keeps:
    the best box, then the best of those overlapping every kept one by at most the threshold."""
    rng = np.random.default_rng(3)
    for trial in range(50):
        corner = rng.uniform(0, 200, (80, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(5, 60, (80, 2))], axis=1)
        scores, threshold = rng.random(80), (0.5, 0.7)[trial % 2]
        kept: list[int] = []
        for i in np.argsort(-scores):
            if all(iou(boxes[[k]], boxes[i])[0] <= threshold for k in kept):
                kept.append(int(i))
        assert nms(boxes, scores, threshold).tolist() == kept


@pytest.mark.slow
def test_tells_barred_eyes_from_open_ones(detector, detected):
    """`eyes_occluded` on faces as they are (no) and, found again, once barred (yes)."""
    from minorage.faces.occlusion import eyes_occluded

    plain = barred = refound = 0
    faces = [(image, face) for image, face in detected if face is not None][:120]
    for image, face in faces:
        plain += eyes_occluded(image, face)
        covered, _ = occlude(image, face)
        again = main_face(detector.detect(covered), covered.shape)
        if again is not None:
            refound += 1
            barred += eyes_occluded(covered, again)
    assert plain <= 0.02 * len(faces)
    assert refound >= 0.95 * len(faces) and barred >= 0.95 * refound


def test_barred_eyes_are_told_on_a_face_cut_by_the_image_edge(detected):
    """The band from eye to eye is read where it lies inside the image: a barred face whose
    eye line starts beyond the left edge is still barred, the same face unbarred is not."""
    from minorage.faces.occlusion import eyes_occluded

    for image, face in [(image, face) for image, face in detected if face is not None][:20]:
        covered, _ = occlude(image, face)
        cut = int(face.eyes[:, 0].min()) + 2  # the left eye and the band's start outside
        moved = face.shifted(-cut, 0)
        assert eyes_occluded(covered[:, cut:], moved)
        assert not eyes_occluded(image[:, cut:], moved)


@pytest.mark.slow
def test_the_union_finds_every_face_stock_mtcnn_finds_in_scenes(utkface_files):
    """Held-out faces pasted into face-free scenes, turned up to 30 degrees, some in grayscale or
    sepia or cut by the edge: wherever stock MTCNN finds the face, the union of stock and
    eye-bar-tuned stages finds it too, with YuNet's proposals added as well (the default), on
    MTCNN's pyramid and on `predict`'s finer one, and each finds barred faces stock misses."""
    from minorage.config import DetectorTrainingConfig, InferenceConfig, ScanConfig
    from minorage.faces.detector_training import FACE_FREE_EVAL, face_free_pictures, face_pairs, split_photos
    from minorage.faces.wild import found, wild_photo

    _, held = split_photos(DetectorTrainingConfig())
    originals, barred = face_pairs(held[:60:2])
    backgrounds = face_free_pictures(FACE_FREE_EVAL)
    rng = np.random.default_rng(5)
    scenes = [wild_photo(chip, truth, backgrounds[k % len(backgrounds)], ("none", "grayscale", "sepia", "edge")[k % 4], rng)
              for k, (chip, truth) in enumerate(originals + barred)]
    stock = FaceDetector(DetectorConfig(weights="stock"))
    by_stock = [found(stock, p) for p in scenes]
    assert sum(by_stock[: len(originals)]) >= 0.8 * len(originals)
    default = DetectorConfig().weights
    for weights, factor in (("union", ScanConfig.pyramid_factor), (default, ScanConfig.pyramid_factor), (default, InferenceConfig.pyramid_factor)):
        chosen = FaceDetector(DetectorConfig(weights=weights, factor=factor))  # the union; the default, as scan and predict run it
        by_chosen = [found(chosen, p) for p in scenes]
        assert all(u for s, u in zip(by_stock, by_chosen) if s), (weights, factor)
        assert sum(by_chosen[len(originals):]) > sum(by_stock[len(originals):]), (weights, factor)


@pytest.mark.slow
def test_yunet_faces_are_placed_as_mtcnn_places_its_own(detected):
    """YuNet's proposals go through the O-Nets, so a face found both ways gets nearly the same
    box (the age model was trained on faces framed from MTCNN boxes) and level eye points."""
    yunet = FaceDetector(DetectorConfig(weights="yunet"))
    overlaps = []
    for image, face in detected[::6]:
        if face is None:
            continue
        other = main_face(yunet.detect(image), image.shape)
        assert other is not None
        overlaps.append(iou(np.array([other.box]), np.array(face.box))[0])
        (lx, ly), (rx, ry) = other.eyes
        assert lx < rx and abs(ly - ry) < 0.15 * other.width
    assert len(overlaps) >= 30 and np.median(overlaps) > 0.85 and min(overlaps) > 0.6


def test_a_pasted_face_is_where_the_scene_says(some_faces):
    """`wild` pastes a real face into a face-free picture, turned and degraded; the scene's box
    is where the face is: stock MTCNN finds it there, and finds nothing where no face was put."""
    from minorage.faces.detector_training import FACE_FREE_EVAL, face_free_pictures
    from minorage.faces.wild import found, wild_photo

    stock = FaceDetector(DetectorConfig(weights="stock"))
    image = cv2.imread(str(some_faces[6]))
    truth = main_face(stock.detect(image), image.shape)
    background = face_free_pictures(FACE_FREE_EVAL)[0]
    scene = wild_photo(image, truth, background, "grayscale", np.random.default_rng(3))
    assert scene.image.shape == (480, 640, 3) and scene.degradation == "grayscale"
    assert found(stock, scene)
    elsewhere = dataclasses.replace(scene, box=(0.0, 0.0, 20.0, 20.0))
    assert not found(stock, elsewhere)
    # the face as training truth: upright, where and as large as stock MTCNN boxes it, its points on the face's
    there = main_face(stock.detect(scene.image), scene.image.shape)
    assert iou(np.array([there.box]), np.array(scene.face.box))[0] > 0.7
    assert np.abs(there.points - scene.face.points).max() < 0.1 * scene.face.width


def test_the_tuned_pair_a_detector_runs_has_a_fingerprint(tmp_path):
    """A scan case records which eye-bar-tuned pair found its faces: none for stock MTCNN, the
    shipped pair's for the default, another for a folder holding other weights."""
    import shutil

    from minorage.faces.detection import stock_weights_dir, tuned_pair_digest

    shipped = tuned_pair_digest(DetectorConfig())
    assert tuned_pair_digest(DetectorConfig(weights="stock")) is None
    assert len(shipped) == 16 and tuned_pair_digest(DetectorConfig(weights="occlusion")) == shipped
    for name in ("rnet.pt", "onet.pt"):
        shutil.copy(stock_weights_dir() / name, tmp_path / name)
    assert tuned_pair_digest(DetectorConfig(tuned=str(tmp_path))) not in (None, shipped)

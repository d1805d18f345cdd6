"""Fine-tuning MTCNN on eye-barred faces: a miniature run, and the shipped weights."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch

from minorage.config import DetectorConfig, DetectorTrainingConfig
from minorage.faces.detection import FaceDetector, main_face, shipped_weights_dir
from minorage.faces.detector_training import _flip_points, face_candidates, is_held_out, train_detector
from minorage.faces.occlusion import occlude


@pytest.mark.slow
def test_miniature_fine_tuning_writes_usable_weights(tmp_path):
    cfg = DetectorTrainingConfig(photos=12, epochs=1, negative_scales=(1.0,), negatives_per_picture=20)
    card = train_detector(tmp_path, cfg, progress=False)
    assert (tmp_path / "rnet.pt").is_file() and (tmp_path / "onet.pt").is_file()
    assert json.loads((tmp_path / "card.json").read_text())["config"]["photos"] == 12
    assert card["data"]["samples"]["onet"]["positive"] > 0 and card["data"]["samples"]["onet"]["negative"] > 0
    FaceDetector(DetectorConfig(weights=str(tmp_path)))  # loads


@pytest.mark.slow
def test_shipped_detector_finds_barred_faces_stock_misses(utkface_files):
    """On held-out photos (never trained on): the shipped R/O-Net find eye-barred faces."""
    stock, shipped = FaceDetector(DetectorConfig(weights="stock")), FaceDetector(DetectorConfig(weights="occlusion"))
    held = [p for p in utkface_files[::23] if is_held_out(p)][:60]
    found = {"stock": 0, "shipped": 0}
    total = 0
    for path in held:
        image = cv2.imread(str(path))
        face = main_face(stock.detect(image), image.shape)
        if face is None:
            continue
        barred, _ = occlude(image, face)
        total += 1
        found["stock"] += bool(stock.detect(barred))
        found["shipped"] += bool(shipped.detect(barred))
    assert total >= 50
    assert found["shipped"] >= 0.95 * total and found["shipped"] > found["stock"] + 0.2 * total
    assert json.loads((shipped_weights_dir() / "card.json").read_text())["config"]["photos"] == 3000


def test_candidates_are_labelled_by_overlap():
    from minorage.faces.detection import Face

    truth = Face((50, 50, 150, 170), 0.99, np.zeros((5, 2)))
    proposals = np.array([[52, 55, 152, 155, 0.9], [300, 300, 400, 400, 0.8], [90, 90, 190, 190, 0.7]])
    boxes, labels = face_candidates(proposals, truth, np.random.default_rng(0), DetectorTrainingConfig())
    assert set(labels.tolist()) <= {1, 0, -1} and (labels == 1).any() and (labels == 0).any()


def test_mirrored_point_targets_swap_sides():
    points = torch.tensor([[0.3, 0.7, 0.5, 0.35, 0.65, 0.4, 0.42, 0.6, 0.8, 0.82]])
    flipped = _flip_points(points, torch.tensor([True]))
    assert torch.allclose(flipped, torch.tensor([[0.3, 0.7, 0.5, 0.35, 0.65, 0.42, 0.4, 0.6, 0.82, 0.8]]))


def test_scene_samples_are_added_and_the_chips_samples_stay_as_they_were():
    """`scenes` adds samples cut from real faces pasted into face-free pictures, faces among
    them, about as many again for each further scene a photo, and leaves the samples a run
    without scenes makes unchanged (their own generator)."""
    from minorage.faces.detector_training import build_samples, split_photos

    photos = split_photos(DetectorTrainingConfig())[0][:4]
    cfg = DetectorTrainingConfig(negative_scales=(1.0,), negatives_per_picture=10)
    chips = build_samples(photos, cfg, progress=False)["rnet"]
    both = build_samples(photos, dataclasses.replace(cfg, scenes=1), progress=False)["rnet"]
    extra = len(both["labels"]) - len(chips["labels"])
    assert extra > 0
    twice = build_samples(photos, dataclasses.replace(cfg, scenes=2), progress=False)["rnet"]
    assert 1.5 * extra <= len(twice["labels"]) - len(chips["labels"]) <= 2.5 * extra  # two scenes a photo
    differ = np.flatnonzero(np.any(chips["patches"] != both["patches"][: len(chips["patches"])], axis=(1, 2, 3)))
    first = int(differ[0]) if len(differ) else len(chips["labels"])  # where the scenes' samples begin
    for key in ("patches", "labels", "boxes"):
        assert np.array_equal(both[key][:first], chips[key][:first])
        assert np.array_equal(both[key][first + extra :], chips[key][first:])
    added = both["labels"][first : first + extra]
    assert np.sum(added == 1) >= 4 and np.sum(added == 0) > 0  # faces and background from the scenes
    assert np.all(np.abs(both["boxes"][first : first + extra][added == 1]) < 0.5)  # positives lie on the face


def _face_free_folder(root):
    """A folder as `--negatives` takes one: crops of scikit-image's coffee picture, some with a
    transparent half (as stamps and cut-outs are), in nested folders, beside a drawing in SVG."""
    from minorage.faces.detector_training import face_free_pictures

    coffee = face_free_pictures(("coffee.png",))[0]
    (root / "cups" / "close").mkdir(parents=True)
    for k in range(12):
        crop = coffee[10 * k : 10 * k + 200, 15 * k : 15 * k + 260]
        if k % 2:
            crop = np.dstack([crop, np.full(crop.shape[:2], 255, np.uint8)])
            crop[:, :100, 3] = 0
        cv2.imwrite(str(root / ("cups/close" if k % 3 else "cups") / f"cup{k}.png"), crop)
    (root / "cups" / "drawing.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    return coffee


def test_a_folder_of_face_free_pictures_is_split_by_content_and_laid_on_grey(tmp_path):
    from minorage.faces.detector_training import folder_pictures

    _face_free_folder(tmp_path)
    train, held = folder_pictures(tmp_path, False), folder_pictures(tmp_path, True)
    assert train and held and not set(train) & set(held)
    assert sorted({*train, *held}) == sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png"))  # no SVG
    assert {name: is_held_out(tmp_path / name) for name in held} == dict.fromkeys(held, True)
    pictures = {**train, **held}
    see_through = pictures[next(n for n in pictures if n.endswith(("cup1.png", "cup5.png", "cup7.png")))]
    assert see_through.shape[2] == 3 and np.all(see_through[:, :100] == 128) and not np.all(see_through[:, 100:] == 128)
    (tmp_path / "cups" / "broken.png").write_bytes(b"not a picture")
    with pytest.raises(ValueError, match="broken.png"):
        folder_pictures(tmp_path, is_held_out(tmp_path / "cups" / "broken.png"))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        folder_pictures(tmp_path / "nowhere", False)


def test_a_folder_of_face_free_pictures_adds_only_negatives_after_the_others(tmp_path):
    """`negatives` adds P-Net's proposals on the folder's training pictures as negatives, at most
    `negatives_per_folder_picture` a scale and mirror image, after every other sample."""
    from minorage.faces.detector_training import build_samples, folder_pictures, split_photos

    _face_free_folder(tmp_path)
    photos = split_photos(DetectorTrainingConfig())[0][:2]
    cfg = DetectorTrainingConfig(negative_scales=(1.0, 2.0), negatives_per_picture=10, negatives_per_folder_picture=3)
    without = build_samples(photos, cfg, progress=False)["onet"]
    with_folder = build_samples(photos, dataclasses.replace(cfg, negatives=str(tmp_path)), progress=False)["onet"]
    extra = len(with_folder["labels"]) - len(without["labels"])
    assert 0 < extra <= 3 * 2 * 2 * len(folder_pictures(tmp_path, False))
    for key in ("patches", "labels", "boxes", "points"):
        assert np.array_equal(with_folder[key][: len(without[key])], without[key])
    assert np.all(with_folder["labels"][-extra:] == 0) and np.all(with_folder["boxes"][-extra:] == 0)


@pytest.mark.slow
def test_false_detections_are_counted_on_the_held_out_part_of_a_folder(tmp_path, utkface_files):
    """`evaluate_detectors(face_free=...)` looks at the folder's held-out pictures at three sizes:
    a face put among them (a held-out UTKFace photo) is counted, the training part is not looked at."""
    import shutil

    from minorage.faces.detector_training import evaluate_detectors, folder_pictures

    _face_free_folder(tmp_path)
    face = next(p for p in utkface_files if is_held_out(p))
    shutil.copy(face, tmp_path / "cups" / "not_a_cup.jpg")
    held = folder_pictures(tmp_path, True)
    stock = DetectorConfig(weights="stock")
    result = evaluate_detectors({"stock": stock}, [face], progress=False, face_free=str(tmp_path))["stock"]
    assert result["folder_pictures"] == 3 * len(held)
    assert result["false_detections_folder"] >= 2  # the face, at least at its own size and twice it
    shutil.move(tmp_path / "cups" / "not_a_cup.jpg", tmp_path / "face.jpg")
    without = evaluate_detectors({"stock": stock}, [face], progress=False, face_free=str(tmp_path / "cups"))["stock"]
    assert without["folder_pictures"] == 3 * (len(held) - 1) and without["false_detections_folder"] < result["false_detections_folder"]

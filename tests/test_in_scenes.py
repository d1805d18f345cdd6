"""Faces framed upright by their eyes, and the model judged on whole scenes with detection on."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from minorage.cli import main
from minorage.config import DetectorConfig, Framing, Framings
from minorage.faces.detection import FaceDetector, main_face
from minorage.faces.framing import frame_face
from minorage.model.checkpoint import load_network, save_checkpoint


def test_framing_reads_cards_written_before_alignment_existed():
    old = {"margin": 0.2, "size": 64, "border": "replicate"}
    assert Framing.from_dict(old) == Framing(margin=0.2) and not Framing.from_dict(old).align
    assert Framing.from_dict(Framing(align=True).to_dict()).align


def test_an_aligned_frame_undoes_a_tilted_head(some_faces):
    """A real face turned 25 degrees in its photo, framed upright by its eye points, looks like
    the upright face framed the same way; framed without turning it, it does not. A face whose
    eyes are nearly level (UTKFace's chips) is framed nearly the same either way."""
    stock = FaceDetector(DetectorConfig(weights="stock"))
    plain, aligned = Framing(margin=0.2), Framing(margin=0.2, align=True)
    for path in some_faces[:6]:
        photo = cv2.copyMakeBorder(cv2.imread(str(path)), 100, 100, 100, 100, cv2.BORDER_REPLICATE)
        face = main_face(stock.detect(photo), photo.shape)
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        tilted = cv2.warpAffine(photo, cv2.getRotationMatrix2D((cx, cy), 25, 1.0), (photo.shape[1], photo.shape[0]), borderMode=cv2.BORDER_REPLICATE)
        found = main_face(stock.detect(tilted), tilted.shape)
        level, upright = (frame_face(photo, face.box, f, face.eyes).astype(float) for f in (plain, aligned))
        left_tilted = np.abs(frame_face(tilted, found.box, plain, found.eyes).astype(float) - level).mean()
        straightened = np.abs(frame_face(tilted, found.box, aligned, found.eyes).astype(float) - upright).mean()
        assert straightened < 0.5 * left_tilted
        assert np.abs(upright - level).mean() < 0.5 * left_tilted


@pytest.mark.slow
def test_evaluate_in_scenes_finds_frames_and_ages_the_test_photos(small_dataset, capsys, tmp_path):
    """`evaluate --scenes N`: N test photos of real faces, each pasted into a scene (normal and
    barred), found by `predict`'s detector and aged; the ages are over the faces found, every
    photo is counted once in the found shares, per degradation and per group of people, and a
    missed child counts as unflagged. The stored-face evaluation of a model whose framing turns
    faces upright is the same (the stored faces are framed already); in scenes it differs."""
    _, data, _, _ = small_dataset
    assert main(["evaluate", "--data", str(data), "--scenes", "24", "--format", "json", "--bootstrap", "0"]) == 0
    results = json.loads(capsys.readouterr().out)
    for variant, least in (("org", 0.9), ("ocl", 0.75)):
        measured, scenes = results[variant], results[variant]["scenes"]
        assert scenes["photos"] == 24 and scenes["found"] >= least
        assert measured["n"] == round(scenes["found"] * 24)
        for key in ("by_degradation", "by_sex", "by_ethnicity"):
            assert sum(part["photos"] for part in scenes[key].values()) == 24
        assert measured["taken_as_barred"] == pytest.approx(0.0 if variant == "org" else 1.0, abs=0.1)  # the eye-bar test, as predict runs it
        if "minors_flagged_with_misses" in scenes:
            assert scenes["minors_flagged_with_misses"] <= measured["minor_recall"] + 1e-9
        assert 0 < measured["MAE"] < 15
    assert main(["evaluate", "--data", str(data), "--scenes", "8", "--bootstrap", "0", "--variant", "org"]) == 0
    table = capsys.readouterr().out
    assert "photos in scenes, detection on" in table and "| 8 | all |" in table
    with pytest.raises(SystemExit):  # a look and scenes are two different questions: one at a time
        main(["evaluate", "--data", str(data), "--scenes", "8", "--look", "grayscale"])
    plain, aligned = tmp_path / "plain.safetensors", tmp_path / "aligned.safetensors"
    net, card = load_network(Path("src/minorage/weights/default.safetensors"))
    save_checkpoint(net, replace(card, framing=Framing(margin=0.2)), plain)
    assert main(["combine", str(plain), "--align-faces", "--out", str(aligned)]) == 0
    stored = []
    for model in (str(plain), str(aligned)):
        assert main(["evaluate", "--model", model, "--data", str(data), "--format", "json", "--bootstrap", "0", "--variant", "org"]) == 0
        stored.append(json.loads(capsys.readouterr().out))
    assert stored[0]["org"]["MAE"] == stored[1]["org"]["MAE"]
    in_scenes = []
    for model in (str(plain), str(aligned)):
        assert main(["evaluate", "--model", model, "--data", str(data), "--scenes", "24", "--format", "json", "--bootstrap", "0",
                     "--variant", "org"]) == 0
        in_scenes.append(json.loads(capsys.readouterr().out)["org"])
    assert in_scenes[0]["n"] == in_scenes[1]["n"] and in_scenes[0]["MAE"] != in_scenes[1]["MAE"]


def test_predict_and_scan_frame_faces_as_the_model_card_says(some_faces):
    """The shared path from an image to its framed faces (`predict`, `scan`) turns each face
    upright by its eye points only when the model's framing asks for it."""
    from minorage.triage.pipeline import find_faces, frame_crop

    detector = FaceDetector()
    photo = cv2.copyMakeBorder(cv2.imread(str(some_faces[3])), 100, 100, 100, 100, cv2.BORDER_REPLICATE)
    tilted = cv2.warpAffine(photo, cv2.getRotationMatrix2D((200, 200), -20, 1.0), (400, 400), borderMode=cv2.BORDER_REPLICATE)
    plain, aligned = Framing(margin=0.2), replace(Framing(margin=0.2), align=True)
    as_is, upright = find_faces(tilted, detector, Framings(plain)), find_faces(tilted, detector, Framings(aligned))
    assert len(as_is) == len(upright) >= 1
    face = upright[0].face
    assert np.array_equal(upright[0].crop, frame_face(tilted, face.box, aligned, face.eyes))
    assert np.array_equal(as_is[0].crop, frame_face(tilted, face.box, plain))
    assert not np.array_equal(as_is[0].crop, upright[0].crop)
    assert np.array_equal(frame_crop(tilted, detector, Framings(aligned), 1.0)[0].crop, frame_face(tilted, face.box, aligned, face.eyes))


@pytest.mark.slow
def test_a_flag_chosen_in_scenes_reaches_the_reference_models_share_of_minors(small_dataset, one_part_model, tmp_path, capsys):
    """`flag_like`: the same networks judged against themselves keep 17.5; against themselves
    flagging below 20, the lowest flag that flags as many minors in the same scenes, never
    above 20. `evaluate --scenes-skip` takes the photos after those skipped."""
    from minorage import AgeEstimator
    from minorage.paper.in_scenes import flag_like

    _, data, _, _ = small_dataset
    detector = FaceDetector()
    model = AgeEstimator.from_pretrained(str(one_part_model))
    same = flag_like(model, model, detector, data, photos=16, skip=4, progress=False)
    assert same["minor_below"] == 17.5 and same["flagged"] == same["reference_flagged"] and same["photos"] == 16
    generous = AgeEstimator.from_pretrained(str(one_part_model), minor_below=20.0)
    chosen = flag_like(model, generous, detector, data, photos=16, skip=4, progress=False)
    assert 17.5 <= chosen["minor_below"] <= 20.0 and chosen["flagged"] >= chosen["reference_flagged"]
    assert chosen["reference_flagged"] >= same["reference_flagged"]
    assert main(["evaluate", "--data", str(data), "--scenes", "4", "--scenes-skip", "2", "--format", "json", "--bootstrap", "0",
                 "--variant", "org"]) == 0
    assert json.loads(capsys.readouterr().out)["org"]["scenes"]["photos"] == 4
    assert main(["evaluate", "--data", str(data), "--scenes-skip", "2"]) != 0  # the photos of scenes, without scenes


@pytest.mark.slow
def test_scenes_looked_at_in_threads_are_the_scenes_of_one_thread(small_dataset):
    """The scenes are made in order with one random generator and their faces looked for several
    at a time: the same scenes, faces and looks as one at a time, in the same order."""
    from minorage.paper.in_scenes import photos_of_split, scene_faces

    _, data, _, _ = small_dataset
    rows, detector = photos_of_split(data, photos=12), FaceDetector(DetectorConfig())
    one, three = (list(scene_faces(rows, True, detector, seed=3, progress=False, threads=t)) for t in (1, 3))
    assert [kind for _, _, kind in three] == [kind for _, _, kind in one]
    for (scene_a, face_a, _), (scene_b, face_b, _) in zip(one, three, strict=True):
        assert np.array_equal(scene_a.image, scene_b.image)
        assert (face_a is None) == (face_b is None)
        if face_a is not None:
            assert face_a.box == face_b.box
    assert sum(face is not None for _, face, _ in one) >= 8

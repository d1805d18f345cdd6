"""A model with an edge part: the faces whose frame leaves the photo read by one part, the others
by the main part, each at its own flags, in the model format, `predict`, `scan` and `evaluate`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from minorage import AgeEstimator
from minorage.cli import main
from minorage.faces.detection import FaceDetector
from minorage.faces.framing import filled_share, frame_face, frame_routed, framed_square, leaves_image
from minorage.model.checkpoint import load_network, save_checkpoint
from minorage.model.ensemble import attach_edge
from minorage.triage.pipeline import Reading, ages_by_item, find_faces

DEFAULT = "src/minorage/weights/default.safetensors"


@pytest.fixture(scope="module")
def routed(tmp_path_factory, one_part_model) -> tuple[Path, AgeEstimator, AgeEstimator]:
    """(the routed checkpoint, its main part alone, its edge part alone): one network of the
    shipped model, upright framing, no calibration, flags 18.0 / 19.0 (barred) as the main
    part; the shipped model's one-part form as the edge part, built the way users build one."""
    folder = tmp_path_factory.mktemp("routed")
    net, card = load_network(Path(DEFAULT), member=1)
    card = replace(card, name="one-member", calibration=None, framing=replace(card.framing, align=True))
    single = save_checkpoint(net, card, folder / "single.safetensors")
    out = folder / "routed.safetensors"
    assert main(["combine", str(single), "--edge", str(one_part_model), "--minor-below", "18.0", "--minor-below-barred", "19.0",
                 "--name", "routed", "--out", str(out)]) == 0
    return out, AgeEstimator.from_pretrained(str(single)), AgeEstimator.from_pretrained(str(one_part_model))


def test_a_frame_that_leaves_the_image_is_told_by_where_it_lies():
    """By hand: a 40-pixel face box with a 20 % margin needs 8 pixels on each side."""
    assert not leaves_image((100, 100, 3), (30, 30, 70, 70), 0.2)
    assert leaves_image((100, 100, 3), (5, 30, 45, 70), 0.2)  # 3 pixels short on the left
    assert leaves_image((100, 100, 3), (30, 55, 70, 95), 0.2)  # past the bottom
    assert not leaves_image((100, 100, 3), (8, 8, 48, 48), 0.2)  # exactly at the corner


def test_the_share_of_a_frame_past_the_image_is_counted_by_hand():
    """The 56-pixel square of a 40-pixel box at 20 %: 3 columns past the left edge are 3/56 of
    it; 3 columns and 3 rows past a corner leave 53 * 53 of 56 * 56 inside."""
    assert filled_share((100, 100, 3), (30, 30, 70, 70), 0.2) == 0.0
    assert filled_share((100, 100, 3), (5, 30, 45, 70), 0.2) == pytest.approx(3 / 56)
    assert filled_share((100, 100, 3), (5, 5, 45, 45), 0.2) == pytest.approx(1 - 53 * 53 / 56**2)
    assert leaves_image((100, 100, 3), (5, 30, 45, 70), 0.2, above=0.05)  # 5.4 % past
    assert not leaves_image((100, 100, 3), (5, 30, 45, 70), 0.2, above=0.06)


def test_the_routed_checkpoint_reads_each_face_with_its_own_part(routed, one_part_model, some_faces):
    """Saved and loaded, the model gives the faces marked as edge-filled the edge part's ages and
    the others the main part's; faces with no route known are read by the main part."""
    path, alone, edge = routed
    model = AgeEstimator.from_pretrained(str(path))
    assert model.edge is not None and model.card.minor_below_barred == 19.0 and model.card.edge["source"] == str(one_part_model)
    assert model.framings == (alone.framing, edge.framing, 0.0, 0) and model.framing.align and not edge.framing.align
    faces = np.stack([frame_face(cv2.imread(str(p)), (40, 40, 160, 160), edge.framing) for p in some_faces[:10]])
    filled = np.arange(10) % 3 == 0
    ages = model.predict(faces, edge_filled=filled)
    np.testing.assert_allclose(ages[filled], edge.predict(faces[filled]), atol=1e-4)
    np.testing.assert_allclose(ages[~filled], alone.predict(faces[~filled]), atol=1e-4)
    assert not np.allclose(alone.predict(faces), edge.predict(faces), atol=0.05)  # the two parts do differ
    np.testing.assert_allclose(model.predict(faces), alone.predict(faces), atol=1e-4)
    with pytest.raises(ValueError, match="each of the 10 faces"):
        model.predict(faces, edge_filled=filled[:5])


def test_each_route_and_kind_of_face_is_read_at_its_own_flag(routed):
    """By hand: the main part flags below 18.0 (normal) and 19.0 (barred) and has no calibration;
    the edge part keeps the shipped 17.5 and its p_minor. A user's own flag overrides them all."""
    path, _, _ = routed
    reading = Reading.of(AgeEstimator.from_pretrained(str(path)))
    assert reading.verdict(17.8)["minor"] and not reading.verdict(18.5)["minor"]
    assert reading.verdict(18.5, eyes_barred=True)["minor"] and not reading.verdict(19.2, eyes_barred=True)["minor"]
    assert "p_minor" not in reading.verdict(17.8)
    on_edge = reading.verdict(17.8, edge_filled=True)
    assert not on_edge["minor"] and 0 < on_edge["p_minor"] < 1
    assert reading.verdict(17.4, eyes_barred=True, edge_filled=True)["minor"]
    assert not reading.verdict(17.8, eyes_barred=True, edge_filled=True)["minor"]
    assert [reading.flag_below(b, e) for e in (False, True) for b in (False, True)] == [18.0, 19.0, 17.5, 17.5]
    chosen = Reading.of(AgeEstimator.from_pretrained(str(path), minor_below=17.0))
    assert not chosen.verdict(17.5, eyes_barred=True)["minor"] and not chosen.verdict(17.5, edge_filled=True)["minor"]
    with pytest.raises(ValueError, match="calibrated"):  # a flag stated as a probability needs p_minor on every route
        Reading.of(AgeEstimator.from_pretrained(str(path)), minor_above=0.5)


def test_faces_in_photos_are_framed_for_their_route(routed, some_faces):
    """A UTKFace chip's face fills it, so its frame leaves the chip: framed for the edge part. The
    same face in a larger photo has its surroundings around it: framed upright for the main part."""
    path, alone, edge = routed
    model, detector = AgeEstimator.from_pretrained(str(path)), FaceDetector()
    chip = cv2.imread(str(some_faces[6]))
    in_photo = cv2.copyMakeBorder(chip, 150, 150, 150, 150, cv2.BORDER_CONSTANT, value=(90, 110, 130))
    (tight,), (roomy,) = find_faces(chip, detector, model.framings), find_faces(in_photo, detector, model.framings)
    assert tight.edge_filled and not roomy.edge_filled
    assert np.array_equal(tight.crop, frame_face(chip, tight.face.box, edge.framing))
    assert np.array_equal(roomy.crop, frame_face(in_photo, roomy.face.box, alone.framing, roomy.face.eyes))
    assert frame_routed(in_photo, roomy.face.box, alone.framings)[1] is False  # a model without an edge part never routes
    ages = ages_by_item([[tight], [roomy]], model)
    assert ages[0][0] == pytest.approx(edge.predict(tight.crop[None])[0], abs=1e-4)
    assert ages[1][0] == pytest.approx(alone.predict(roomy.crop[None])[0], abs=1e-4)


def test_a_face_cut_a_little_by_the_border_stays_with_the_main_part_above_a_share(routed, one_part_model, some_faces, tmp_path, capsys):
    """`combine --edge-above 0.15`: a chip (about half its frame past it) still goes to the edge
    part; the same face in a photo whose border cuts a few per cent of its frame now goes to the
    main part, framed upright, where any share sent it to the edge part. The card keeps the share."""
    path, alone, edge = routed
    out = tmp_path / "above.safetensors"
    assert main(["combine", str(path.parent / "single.safetensors"), "--edge", str(one_part_model), "--edge-above", "0.15",
                 "--out", str(out)]) == 0
    above, any_share, detector = AgeEstimator.from_pretrained(str(out)), AgeEstimator.from_pretrained(str(path)), FaceDetector()
    assert above.framings.edge_above == 0.15 and above.card.to_dict()["decision"]["edge_above"] == 0.15
    chip = cv2.imread(str(some_faces[6]))
    (tight,) = find_faces(chip, detector, above.framings)
    assert tight.edge_filled
    (found,) = find_faces(cv2.copyMakeBorder(chip, 150, 150, 150, 150, cv2.BORDER_CONSTANT, value=(90, 110, 130)), detector, above.framings)
    x1, _, x2, _ = framed_square(found.face.box, edge.framing.margin)
    cut = cv2.copyMakeBorder(chip, 150, 150, 150, 150, cv2.BORDER_CONSTANT, value=(90, 110, 130))[:, x1 + (x2 - x1) // 20:]  # a 20th off the left
    (face,) = find_faces(cut, detector, above.framings)
    assert 0 < filled_share(cut.shape, face.face.box, edge.framing.margin) <= 0.15
    assert not face.edge_filled and find_faces(cut, detector, any_share.framings)[0].edge_filled
    assert np.array_equal(face.crop, frame_face(cut, face.face.box, alone.framing, face.face.eyes))
    assert main(["combine", str(path.parent / "single.safetensors"), "--edge-above", "0.15", "--out", str(tmp_path / "x.safetensors")]) != 0
    assert "--edge" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()


def test_predict_and_scan_give_each_face_its_routes_verdict(routed, some_faces, tmp_path, capsys):
    """`predict` and `scan` read chips and the same faces in larger photos: each face's flag and
    p_minor are those of the part that read it."""
    path, _, _ = routed
    folder = tmp_path / "photos"
    folder.mkdir()
    for k, photo in enumerate(some_faces[4:10]):
        chip = cv2.imread(str(photo))
        cv2.imwrite(str(folder / f"chip{k}.png"), chip)
        cv2.imwrite(str(folder / f"photo{k}.png"), cv2.copyMakeBorder(chip, 150, 150, 150, 150, cv2.BORDER_CONSTANT, value=(90, 110, 130)))
    reading = Reading.of(AgeEstimator.from_pretrained(str(path)))
    assert main(["predict", str(folder), "--model", str(path), "--format", "json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if r["status"] == "ok"]
    chips = [r for r in rows if Path(r["path"]).name.startswith("chip")]
    photos = [r for r in rows if Path(r["path"]).name.startswith("photo")]
    assert chips and photos and all("p_minor" in r for r in chips) and not any("p_minor" in r for r in photos)
    for r in chips:
        assert r["minor"] == reading.verdict(r["age"], r["eyes_occluded"], edge_filled=True)["minor"] and r["minor_below"] == 17.5
    for r in photos:
        assert r["minor"] == reading.verdict(r["age"], r["eyes_occluded"])["minor"]
        assert r["minor_below"] == (19.0 if r["eyes_occluded"] else 18.0)  # each row says the age its flag was read at
    case = tmp_path / "case"
    assert main(["scan", str(folder), "--out", str(case), "--model", str(path), "--workers", "1"]) == 0
    import sqlite3

    db = sqlite3.connect(case / "case.sqlite")
    stored = db.execute("SELECT files.path, age, minor, p_minor, eyes_occluded FROM faces JOIN files ON files.id = faces.file_id").fetchall()
    assert len(stored) == len(rows)
    for file, age, minor, p_minor, barred in stored:
        chip = Path(file).name.startswith("chip")
        assert (p_minor is not None) == chip and minor == reading.verdict(age, bool(barred), edge_filled=chip)["minor"]


def test_evaluate_reads_the_stored_faces_through_the_route(routed, one_part_model, small_dataset, capsys):
    """The stored faces' frames left their chips: `evaluate` reads them with the edge part, at its
    flag, as the edge model alone; it says how many went there and at which flags."""
    path, _, _ = routed
    _, data, _, _ = small_dataset
    measured = []
    for model in (str(path), str(one_part_model)):
        assert main(["evaluate", "--model", model, "--data", str(data), "--format", "json", "--bootstrap", "0"]) == 0
        measured.append(json.loads(capsys.readouterr().out))
    through, edge = measured
    for variant in ("org", "ocl"):
        assert through[variant]["routed_to_edge"] > 0.95 and through[variant]["edge_minor_below"] == 17.5
        assert through[variant]["minor_below"] == (18.0 if variant == "org" else 19.0)
        assert through[variant]["MAE"] == pytest.approx(edge[variant]["MAE"], abs=0.05)
        assert through[variant]["minor_recall"] == pytest.approx(edge[variant]["minor_recall"], abs=0.02)


def test_combine_refuses_parts_that_cannot_go_together(routed, one_part_model):
    """An edge part of another age range, or a routed model given another edge part, is refused."""
    path, _, _ = routed
    net, card = load_network(Path(DEFAULT))
    with pytest.raises(ValueError, match="reports ages differently"):
        attach_edge(net, replace(card, max_age=None), *load_network(Path(DEFAULT)), "default")
    assert main(["combine", str(path), "--edge", str(one_part_model), "--out", str(path.parent / "twice.safetensors")]) == 2
    assert not (path.parent / "twice.safetensors").exists()


def test_in_scenes_each_face_gets_its_parts_flag_for_the_kind_the_eye_bar_test_says(routed):
    """By hand: as `predict` flags them, a face read by the main part gets 18.0, or 19.0 where the
    eye-bar test calls it barred; one read by the edge part its 17.5 either way."""
    model = AgeEstimator.from_pretrained(str(routed[0]))
    got = model.flags(np.array([False, False, True, True]), np.array([False, True, False, True]))
    assert got.tolist() == [18.0, 19.0, 17.5, 17.5]
    assert routed[2].flags(np.array([False, True]), np.array([True, False])).tolist() == [17.5, 17.5]  # one part, one flag

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
    turned copy of itself, since the eyes and nose go on the template either way. A chip that
    ignored the tilt would differ about as much (a ratio near 1); the points O-Net places on a
    turned face move a little, more on some faces than on others (the detector of 0.6.9: 0.26 on
    average over these 24, 0.70 at worst; 0.6.8's 0.25 and 0.55)."""
    ratios = []
    for path in some_faces:
        photo = cv2.imread(str(path))
        h, w = photo.shape[:2]
        photo = cv2.copyMakeBorder(photo, h // 2, h // 2, w // 2, w // 2, cv2.BORDER_REPLICATE)
        turn = cv2.getRotationMatrix2D((photo.shape[1] / 2, photo.shape[0] / 2), 20, 1.0)
        tilted = cv2.warpAffine(photo, turn, photo.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)
        upright, from_tilted = _blurred(_chip_of(photo, detector)), _blurred(_chip_of(tilted, detector))
        self_turned = cv2.warpAffine(upright, cv2.getRotationMatrix2D((32, 32), 20, 1.0), (64, 64), borderMode=cv2.BORDER_REPLICATE)
        assert upright.shape == (64, 64, 3)
        ratios.append(np.abs(upright - from_tilted).mean() / np.abs(upright - self_turned).mean())
        assert ratios[-1] < 0.8, path.name
    assert np.mean(ratios) < 0.4


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


def _read(age, teacher, barred, flag=17.5, read_barred=False):
    n, barred = len(age), np.array(barred, bool)
    return {"found": np.ones(n, bool), "barred": barred, "age": np.array(age, float),
            "flag": np.full(n, flag), "teacher": np.array(teacher, float), "unread": ~barred if read_barred else barred}


def test_the_veto_lifts_a_flag_only_on_open_eyes():
    """By hand: four faces the model calls 16. The network says 35 of the first two and 20 of
    the others; the second is taken as barred, so only the first's flag is lifted at a veto of 30,
    and none at 40; measured on barred faces instead (`--read-barred`), only the second's."""
    script = _script()
    read = _read([16, 16, 16, 16], [35, 35, 20, 20], [False, True, False, True])
    assert script.flagged(read, script.opinion(30.0)).tolist() == [False, True, True, True]
    assert script.flagged(read, script.opinion(40.0)).tolist() == [True, True, True, True]
    assert script.flagged(read, script.opinion(None)).tolist() == [True, True, True, True]
    on_bars = _read([16, 16, 16, 16], [35, 35, 20, 20], [False, True, False, True], read_barred=True)
    assert script.flagged(on_bars, script.opinion(30.0)).tolist() == [True, False, True, True]  # `--read-barred`: the second face's instead


def test_the_raise_matches_the_minors_the_model_flags_alone():
    """By hand, three minors: the model flags two (16.0, 17.0; 18.2 not). A veto at 30 lifts the
    first (the network says 31) and the raised flag must reach the third: 18.2 < 17.5 + 0.8. The
    raise does not reach faces taken as barred. With a margin of a third of the minors, the
    model alone's share is two thirds plus a third: every minor, so the raise must reach 18.2."""
    script = _script()
    read = _read([16.0, 17.0, 18.2], [31, 20, 20], [False, False, False])
    minors = np.ones(3, bool)
    assert script.matched_raise(read, minors, script.opinion(30.0), 0.0) == 0.8
    assert script.matched_raise(read, minors, script.opinion(None), 0.0) == 0.0
    assert script.matched_raise(read, minors, script.opinion(None), 1 / 3) == 0.8
    barred = _read([16.0, 17.0, 18.2], [31, 20, 20], [False, False, True])
    assert script.matched_raise(barred, minors, script.opinion(30.0), 0.0) == 3.0  # never matched: the last of the raises


def test_a_blend_moves_the_age_of_open_eyed_faces_by_its_weight():
    """By hand, weight 0.25: a face the model calls 16 and the network 24 is read at 18 and not
    flagged at 17.5; raised by 0.6 it is (18 < 18.1). A barred face and a face the network did not
    read (inf, missed) keep the model's 16, flagged at the model's flag; no veto lifts anything."""
    script = _script()
    read = _read([16.0, 16.0, 16.0], [24.0, 24.0, np.inf], [False, True, False])
    second = script.opinion(None, 0.25)
    assert script.ages_of(read, second).tolist() == [18.0, 16.0, 16.0]
    assert script.flagged(read, second).tolist() == [False, True, True]
    assert script.flagged(read, {**second, "raise": 0.6}).tolist() == [True, True, True]
    assert script.matched_raise(read, np.ones(3, bool), second, 0.0) == 0.6


def test_the_measures_split_by_the_part_that_read_each_face():
    """By hand, six photos: a missed minor (counted nowhere), a minor and a woman of 30 read by the
    main part, a minor, a woman of 40 and a man of 50 read by the edge part. Flagged: the main
    part's minor and the edge part's woman. Each part's counts and shares are its own faces'."""
    script = _script()
    read = {"found": np.array([False, True, True, True, True, True]), "edge": np.array([False, False, False, True, True, True])}
    ages = np.array([10.0, 12.0, 30.0, 15.0, 40.0, 50.0])
    people = [("female", "White")] * 5 + [("male", "Asian")]
    parts = script.by_part(read, ages, people, np.array([True, True, False, False, True, False]))
    assert parts["main"] == {"faces": 2, "minors": 1, "minors_flagged": 1.0, "female_26+": 1, "male_26+": 0,
                             "female_26+_called_minors": 0.0, "male_26+_called_minors": None}
    assert parts["edge"] == {"faces": 3, "minors": 1, "minors_flagged": 0.0, "female_26+": 1, "male_26+": 1,
                             "female_26+_called_minors": 1.0, "male_26+_called_minors": 0.0}


def test_a_blend_is_chosen_only_with_ages_no_further_from_the_truth():
    """Two children of 5 and 10 the model reads exactly: a blend with a network that says 9 and
    14 reads them 2 years off at weight 0.5, so it is no candidate; at weight 0 it is. (Two adults
    of 40, read 40 by both, are there so that every measure has someone to count.)"""
    script = _script()
    read = _read([5.0, 10.0, 40.0, 40.0], [9.0, 14.0, 40.0, 40.0], [False] * 4)
    ages, people = np.array([5.0, 10.0, 40.0, 40.0]), [("female", "Asian"), ("male", "White")] * 2
    for weight, kept in ((0.5, False), (0.0, True)):
        second = script.opinion(None, weight)
        measured = script.measures(ages, read["found"], script.ages_of(read, second), script.flagged(read, second), people)
        assert script.no_worse_ages(measured, read, ages, people) is kept
    second = script.opinion(None, 0.0)
    measured = script.measures(ages, read["found"], script.ages_of(read, second), script.flagged(read, second), people)
    assert script.no_worse_ages(measured, read, ages, people, margin=0.1) is False  # not 0.1 years better


def test_kept_reads_are_found_by_photo_wherever_they_were_kept(tmp_path):
    """Reads kept for a choosing and a judging part give back any photos of either, in the order
    asked; a photo they do not hold means the scenes are read again (None)."""
    script = _script()
    kept = {"chosen_on/ids": np.array(["c", "d"]), "judged_on/ids": np.array(["a", "b"])}
    for part, ages in (("chosen_on", [30.0, 40.0]), ("judged_on", [10.0, 20.0])):
        for kind in script.KINDS:
            kept.update({f"{part}/{kind}/age": np.array(ages), f"{part}/{kind}/barred": np.array([False, kind == "barred"])})
    np.savez(tmp_path / "reads.npz", **kept)
    reads = script.kept_reads(tmp_path / "reads.npz", [{"id": i} for i in ("d", "a", "b")])
    assert reads["normal"]["age"].tolist() == [40.0, 10.0, 20.0]
    assert reads["barred"]["unread"].tolist() == [True, False, True]  # kept before `--read-barred`: the barred were unread
    assert script.kept_reads(tmp_path / "reads.npz", [{"id": "a"}, {"id": "e"}]) is None


def test_the_validation_photos_in_scenes_are_those_training_sets_aside(small_dataset):
    """The photos `--choose-on validation` chooses on are the training photos a recipe that
    trains on them all validates on, and none of the test split's."""
    from minorage.config import TrainConfig
    from minorage.paper.in_scenes import photos_of_split
    from minorage.paper.training import fit_and_validation

    _, data, _, _ = small_dataset
    rows = photos_of_split(data, split="validation")
    _, val = fit_and_validation(data, TrainConfig(adult_own_age=True))
    assert rows and {r["id"] for r in rows} == set(val.ids.tolist())
    assert not {r["id"] for r in rows} & {r["id"] for r in photos_of_split(data)}
    with pytest.raises(ValueError, match="test split's or the validation"):
        photos_of_split(data, split="train")


# ---------------------------------------------------------------------------------------------
# The second opinion inside a model: a joined checkpoint, `predict`, `scan` and `evaluate --scenes`.
# The shipped model's one-part form (an SSR-Net, 64 px) stands in for dlib's network (shipped
# inside `blend`, tested in test_exported.py): what is tested is how the two are joined and read out.

DEFAULT = "src/minorage/weights/default.safetensors"


@pytest.fixture(scope="module")
def joined(tmp_path_factory, one_part_model) -> Path:
    """The shipped model with its one-part form as a second opinion: veto 12, raise 1 (low, so that real faces get their flags lifted)."""
    from minorage.cli import main

    out = tmp_path_factory.mktemp("second_opinion") / "joined.safetensors"
    assert main(["combine", DEFAULT, "--second-opinion", str(one_part_model), "--veto", "12", "--raise", "1",
                 "--name", "joined", "--out", str(out)]) == 0
    return out


def test_a_joined_model_loads_back_with_its_second_opinion(joined, one_part_model):
    from minorage import AgeEstimator
    from minorage.model.checkpoint import load_network
    from minorage.model.network import SecondOpinionNetwork

    model, plain, alone = (AgeEstimator.from_pretrained(str(p)) for p in (joined, DEFAULT, one_part_model))
    assert model.opinion is not None and plain.opinion is None
    assert model.card.second_opinion["veto"] == 12 and model.card.second_opinion["raise"] == 1
    assert model.card.second_opinion["source"] == str(one_part_model)
    assert model.framings.chip == 64 and plain.framings.chip == 0
    assert model.framings[:3] == plain.framings[:3]  # the model's own framing, route and flags are kept
    faces = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(model.opinion.predict(faces), alone.predict(faces), atol=1e-4)
    np.testing.assert_allclose(model.predict(faces), plain.predict(faces), atol=1e-4)
    net, _ = load_network(joined)
    assert not isinstance(net, SecondOpinionNetwork)


def test_the_second_opinion_reads_its_networks_whole_range(joined, one_part_model, utkface_files):
    """A veto compares the second network's own estimate: on real faces of people aged 60+, the
    opinion inside a joined model gives ages past the card's cap of 25 (its network's range is
    0-30), the same ones its network gives uncapped, where the network read as a model of its
    own reports them as 25."""
    from minorage import AgeEstimator
    from minorage.model.runtime import predict_ages

    from .conftest import utkface_age

    model, alone = AgeEstimator.from_pretrained(str(joined)), AgeEstimator.from_pretrained(str(one_part_model))
    assert alone.age_range == (0, 25) and model.opinion.age_range == (0, 30)
    elders = [p for p in utkface_files if utkface_age(p) >= 60][:40]
    faces = np.stack([cv2.resize(cv2.imread(str(p)), (64, 64), interpolation=cv2.INTER_AREA) for p in elders])
    ages = model.opinion.predict(faces)
    np.testing.assert_allclose(ages, predict_ages(alone.runtime, faces, 64, None), atol=1e-4)
    assert (ages > 25).any() and alone.predict(faces).max() <= 25


def test_combine_refuses_a_second_opinion_given_by_halves(joined, one_part_model, tmp_path, capsys):
    """The network without its veto or weight, either without a network, a veto past its range, a
    weight past one, and a joined model averaged with another: each refused with its reason,
    nothing written."""
    from minorage.cli import main

    out = str(tmp_path / "x.safetensors")
    for args, reason in ((["--veto", "25"], "goes with"), (["--second-opinion", str(one_part_model)], "goes with"),
                         (["--weight", "0.5"], "goes with"),
                         (["--second-opinion", str(one_part_model), "--veto", "200"], "within its range"),
                         (["--second-opinion", str(one_part_model), "--weight", "1.5"], "share from 0 to 1"),
                         (["--second-opinion", str(one_part_model), "--weight", "0.5", "--raise-barred", "1"], "give it too")):
        assert main(["combine", DEFAULT, *args, "--out", out]) == 2
        assert reason in capsys.readouterr().err
    assert main(["combine", str(joined), str(joined), "--out", out]) == 2
    assert "cannot be averaged" in capsys.readouterr().err
    assert not Path(out).exists()


@pytest.fixture(scope="module")
def blended(tmp_path_factory, one_part_model) -> Path:
    """The shipped model with its one-part form as a second opinion that reads half of each
    open-eyed face's age, its flag raised by 1, and a quarter of each barred face's, raised by
    0.5; no veto."""
    from minorage.cli import main

    out = tmp_path_factory.mktemp("blended") / "blended.safetensors"
    assert main(["combine", DEFAULT, "--second-opinion", str(one_part_model), "--weight", "0.5", "--raise", "1",
                 "--weight-barred", "0.25", "--raise-barred", "0.5", "--name", "blended", "--out", str(out)]) == 0
    return out


def test_a_blend_leaves_out_the_calibration_a_veto_keeps(joined, blended, one_part_model, tmp_path, capsys):
    """A veto leaves the ages, and so the calibration, as they were; a blend changes the ages, so
    its model carries no p_minor until calibrated again, and flagging by p_minor is refused
    with the command that mends it."""
    from minorage import AgeEstimator
    from minorage.cli import main
    from minorage.triage.pipeline import Reading

    veto, blend = AgeEstimator.from_pretrained(str(joined)), AgeEstimator.from_pretrained(str(blended))
    assert veto.calibration is not None and veto.edge.calibration is not None
    assert blend.calibration is None and blend.edge.calibration is None
    with pytest.raises(ValueError, match="minorage calibrate"):
        Reading.of(blend, minor_above=0.5)
    assert main(["combine", DEFAULT, "--second-opinion", str(one_part_model), "--weight", "0.5",
                 "--out", str(tmp_path / "m.safetensors")]) == 0
    assert "`minorage calibrate --model" in capsys.readouterr().err


def test_info_shows_the_ages_a_blend_can_report(joined, blended, capsys):
    """By hand: the blend's larger weight, 0.5, of its second network's whole range (0-30) and
    the rest of the model's top (25) reach 27.5; a veto changes no age and shows no such range."""
    import json

    from minorage.cli import main

    shown = []
    for model in (blended, joined):
        assert main(["info", str(model)]) == 0
        shown.append(json.loads(capsys.readouterr().out))
    assert shown[0]["age_range"] == [0, 25] and shown[0]["blended_age_range"] == [0, 27.5]
    assert "blended_age_range" not in shown[1]


def test_blended_ages_by_hand():
    """Weight 0.25: 16 and 24 give 18 on open eyes; a barred face, a face the network did not
    read (NaN) and a face the detector missed (inf) keep the model's age; with no weight (a card
    of 0.6.0) nothing moves."""
    from minorage.model.estimator import blended_ages

    ages, opinions = [16.0, 16.0, 16.0, np.inf], [24.0, 24.0, np.nan, np.nan]
    barred = [False, True, False, False]
    assert blended_ages(ages, opinions, barred, {"weight": 0.25}).tolist() == [18.0, 16.0, 16.0, np.inf]
    assert blended_ages(ages, opinions, False, {"weight": 1.0}).tolist() == [24.0, 24.0, 16.0, np.inf]
    assert blended_ages(ages, opinions, barred, {"veto": 25.0, "raise": 0.0}).tolist() == ages
    with_barred = {"weight": 0.25, "barred": {"weight": 0.5, "raise": 1.0}}
    assert blended_ages(ages, opinions, barred, with_barred).tolist() == [18.0, 20.0, 16.0, np.inf]


def test_a_barred_part_raises_barred_faces_by_its_own_and_never_vetoes_them():
    """Open eyes raised by 0.5 and vetoed from 25; a barred part raises barred faces by 2 and has
    no veto: a barred face the network puts at 30 keeps its flag, raised; without a barred part
    a barred face is not read."""
    from minorage.model.estimator import with_second_opinion

    second = {"veto": 25.0, "raise": 0.5, "weight": 0.0, "barred": {"weight": 0.5, "raise": 2.0}}
    below = with_second_opinion([18.0, 18.0, 18.0], [30.0, 30.0, 20.0], [False, True, True], second)
    assert below.tolist() == [-np.inf, 20.0, 20.0]
    alone = {k: v for k, v in second.items() if k != "barred"}
    assert with_second_opinion([18.0, 18.0], [30.0, 30.0], [False, True], alone).tolist() == [-np.inf, 18.0]


def test_predict_and_scan_report_the_blended_age_of_every_face_read(blended, some_faces, detector, tmp_path, capsys):
    """Real photos read by the shipped model and by the same with a second opinion at weight 0.5
    on open eyes and 0.25 on barred faces: each face's age lies that share of the way from the
    model's to the second opinion's, in `predict`'s rows and in `scan`'s case, each flagged at
    the flag raised by its kind's raise (1, 0.5); nothing is vetoed."""
    import json
    import sqlite3

    from minorage.cli import main
    from minorage.faces.occlusion import occlude

    folder = tmp_path / "photos"
    folder.mkdir()
    for k, photo in enumerate(some_faces[1:9]):
        chip = cv2.imread(str(photo))
        if k % 3 == 0:  # some faces under the paper's eye bar, read by the barred part
            chip, _ = occlude(chip, main_face(detector.detect(chip), chip.shape))
        cv2.imwrite(str(folder / f"photo{k}.png"), cv2.copyMakeBorder(chip, 120, 120, 120, 120, cv2.BORDER_CONSTANT, value=(90, 110, 130)))

    def rows_of(*model: str) -> dict:
        assert main(["predict", str(folder), *model, "--format", "json"]) == 0
        return {(Path(r["path"]).name, r["face"]): r for r in json.loads(capsys.readouterr().out) if r["status"] == "ok"}

    mine, plain = rows_of("--model", str(blended)), rows_of()
    assert mine.keys() == plain.keys() and len(mine) >= 6
    assert sum(r["eyes_occluded"] for r in mine.values()) == 3  # the three barred faces, and only those
    for key, r in mine.items():
        share, raised = (0.25, 0.5) if r["eyes_occluded"] else (0.5, 1.0)
        assert r["age"] == pytest.approx((1 - share) * plain[key]["age"] + share * r["second_opinion_age"], abs=0.06)  # opinion to a tenth
        assert r["minor_below"] == pytest.approx(plain[key]["minor_below"] + raised)
        assert r["minor"] == (r["age"] < r["minor_below"]) and r["flag_lifted"] is False

    def stored(*model: str) -> list:
        case = tmp_path / f"case{len(model)}"
        assert main(["scan", str(folder), "--out", str(case), *model, "--workers", "1"]) == 0
        db = sqlite3.connect(case / "case.sqlite")
        settings = json.loads(db.execute("SELECT value FROM case_info WHERE key = 'settings'").fetchone()[0])
        opinions = "second_opinions.age" if model else "NULL"
        joined = " LEFT JOIN second_opinions ON second_opinions.face_id = faces.id" if model else ""
        return settings, db.execute(f"SELECT faces.age, faces.eyes_occluded, {opinions} FROM faces JOIN files ON files.id = faces.file_id"
                                    f"{joined} ORDER BY files.path, faces.face").fetchall()

    (settings, kept), (_, alone) = stored("--model", str(blended)), stored()
    assert settings["second_opinion"] == {"veto": None, "raise": 1.0, "weight": 0.5, "barred": {"weight": 0.25, "raise": 0.5}}
    assert len(kept) == len(alone) >= 6 and sum(barred for _, barred, _ in kept) == 3
    for (age, barred, opinion), (own, _, _) in zip(kept, alone):
        share = 0.25 if barred else 0.5
        assert age == pytest.approx((1 - share) * own + share * opinion, abs=0.02)


def _reading(minor_above=None):
    from minorage.model.calibration import Calibrations
    from minorage.triage.pipeline import Reading

    calibration = None
    if minor_above is not None:
        from minorage.model.card import read_card

        calibration = Calibrations.from_dict(read_card(Path(DEFAULT)).calibration)
    return Reading(17.5, calibration=calibration, minor_above=minor_above, second_opinion={"veto": 25.0, "raise": 1.8})


def test_the_verdict_applies_the_veto_and_the_raise_by_hand():
    """Flag 17.5, veto 25, raise 1.8. Age 16 with the second opinion at 30: lifted. Age 19 with
    it at 20: flagged at the raised 19.3. Age 19 with no second opinion (NaN): not flagged, at
    17.5. Eye-barred: the opinion is not read, neither veto nor raise."""
    reading = _reading()
    lifted = reading.verdict(16.0, opinion=30.0)
    assert lifted["minor"] is False and lifted["flag_lifted"] is True and lifted["second_opinion_age"] == 30.0
    raised = reading.verdict(19.0, opinion=20.0)
    assert raised["minor"] is True and raised["minor_below"] == pytest.approx(19.3) and raised["flag_lifted"] is False
    unread = reading.verdict(19.0)
    assert unread["minor"] is False and unread["second_opinion_age"] is None and unread["minor_below"] == 17.5
    barred = reading.verdict(16.0, eyes_barred=True, opinion=30.0)
    assert barred["minor"] is True and barred["flag_lifted"] is False and barred["second_opinion_age"] is None
    assert reading.verdict(30.0, opinion=40.0)["flag_lifted"] is False  # not flagged, so nothing lifted


def test_flagged_by_p_minor_only_the_veto_counts():
    reading = _reading(minor_above=0.5)
    young = reading.verdict(5.0, opinion=20.0)
    assert young["minor"] is True and young["flag_lifted"] is False
    assert reading.verdict(5.0, opinion=30.0)["minor"] is False  # lifted
    assert reading.verdict(18.9, opinion=20.0)["minor"] is False  # p_minor decides; no raise


def _flags_both_ways(path: Path, seed: int) -> tuple:
    """Many random faces of both kinds read by a joined model: the ages it reports flagged by
    `AgeEstimator.flags` (what `evaluate` reads) and by `Reading.verdict` (what `predict` and
    `scan` write) must be the same ones; the model, its reading and the faces for more checks."""
    from minorage import AgeEstimator
    from minorage.triage.pipeline import Reading

    model = AgeEstimator.from_pretrained(str(path))
    reading = Reading.of(model)
    rng = np.random.default_rng(seed)
    n = 400
    raw, opinions = rng.uniform(10, 30, n), np.where(rng.random(n) < 0.2, np.nan, rng.uniform(10, 40, n))
    barred, filled = rng.random(n) < 0.4, rng.random(n) < 0.3
    ages = model.blended(raw, barred, opinions)
    by_estimator = ages < model.flags(filled, barred, opinions)
    by_verdict = [reading.verdict(a, b, f, o)["minor"] for a, b, f, o in zip(ages, barred, filled, opinions)]
    assert by_estimator.tolist() == by_verdict
    assert 0 < by_estimator.sum() < n
    return model, reading, raw, opinions, barred, ages


def test_the_estimators_flags_and_the_verdict_agree(joined):
    """A veto leaves the ages as the model read them, and both read-outs flag the same faces."""
    _, _, raw, _, _, ages = _flags_both_ways(joined, 1)
    assert np.array_equal(ages, raw)


def test_a_blended_models_flags_and_its_verdicts_agree(blended):
    """With weights, a barred face's age is a quarter of the second opinion's (an open-eyed one's
    half), both read-outs flag the same faces, and a barred face's verdict carries the second
    opinion's age and its raised flag."""
    model, reading, raw, opinions, barred, ages = _flags_both_ways(blended, 2)
    read = np.isfinite(opinions)
    assert np.allclose(ages[barred & read], (0.75 * raw + 0.25 * opinions)[barred & read])
    assert np.allclose(ages[~barred & read], (0.5 * raw + 0.5 * opinions)[~barred & read])
    said = reading.verdict(20.0, eyes_barred=True, opinion=30.0)
    assert said["second_opinion_age"] == 30.0 and said["minor_below"] == pytest.approx(model.flag(True) + 0.5)


def test_predict_and_scan_read_the_second_opinion_on_real_faces(joined, some_faces, tmp_path, capsys):
    """Real photos: every face found with open eyes gets the second opinion's age and its flag
    follows the veto, in `predict`'s rows and in `scan`'s case, whose report exports both."""
    import json
    import sqlite3

    from minorage import AgeEstimator
    from minorage.cli import main
    from minorage.triage.pipeline import Reading

    folder = tmp_path / "photos"
    folder.mkdir()
    for k, photo in enumerate(some_faces[1:11]):
        chip = cv2.imread(str(photo))
        cv2.imwrite(str(folder / f"photo{k}.png"), cv2.copyMakeBorder(chip, 120, 120, 120, 120, cv2.BORDER_CONSTANT, value=(90, 110, 130)))
    assert main(["predict", str(folder), "--model", str(joined), "--format", "json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if r["status"] == "ok"]
    assert len(rows) >= 8
    reading = Reading.of(AgeEstimator.from_pretrained(str(joined)))
    for r in rows:
        assert r["eyes_occluded"] or r["second_opinion_age"] is not None
        assert r["minor"] == reading.verdict(r["age"], r["eyes_occluded"], opinion=r["second_opinion_age"] or np.nan)["minor"]
        assert r["flag_lifted"] == (not r["minor"] and r["age"] < r["minor_below"])
    assert main(["predict", str(folder), "--model", str(joined), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(",second_opinion_age,flag_lifted")
    assert main(["predict", str(folder), "--format", "csv"]) == 0
    assert "second_opinion" not in capsys.readouterr().out.splitlines()[0]
    case = tmp_path / "case"
    assert main(["scan", str(folder), "--out", str(case), "--model", str(joined), "--workers", "1"]) == 0
    db = sqlite3.connect(case / "case.sqlite")
    assert {Path(p).name for (p,) in db.execute("SELECT files.path FROM faces JOIN files ON files.id = faces.file_id")} == \
        {Path(r["path"]).name for r in rows}  # the same photos' faces (found at `scan`'s own pyramid)
    settings = json.loads(db.execute("SELECT value FROM case_info WHERE key = 'settings'").fetchone()[0])
    assert settings["second_opinion"] == {"veto": 12.0, "raise": 1.0}
    kept = db.execute("SELECT faces.age, faces.minor, faces.eyes_occluded, second_opinions.age, second_opinions.flag_lifted FROM faces "
                      "LEFT JOIN second_opinions ON second_opinions.face_id = faces.id").fetchall()
    assert kept and all((opinion is None) == bool(barred) for _, _, barred, opinion, _ in kept)  # every open-eyed face read
    for age, minor, barred, opinion, lifted in kept:  # the stored verdict is the stored ages' (`scan` finds faces at its own pyramid)
        said = reading.verdict(age, bool(barred), opinion=np.nan if opinion is None else opinion)
        assert minor == said["minor"] and (lifted is None or lifted == said["flag_lifted"])
    assert main(["report", str(case), "--format", "csv", "-o", str(tmp_path / "faces.csv")]) == 0
    header, *lines = (tmp_path / "faces.csv").read_text().splitlines()
    assert header.endswith(",second_opinion_age,flag_lifted") and len(lines) == len(kept)
    from minorage.triage.review import create_app

    lifted = sum(1 for *_, flag in kept if flag)
    assert lifted  # the veto at 12 lifts some of these faces' flags
    grid = create_app(case, "examiner", "tok3n", 5000).test_client().get("/tok3n/", headers={"Host": "127.0.0.1:5000"})
    html = grid.get_data(as_text=True)
    assert grid.status_code == 200 and html.count("second opinion ") == sum(o is not None for *_, o, _ in kept)
    assert html.count("flag lifted") == lifted
    plain = tmp_path / "plain"
    assert main(["scan", str(folder), "--out", str(plain), "--workers", "1"]) == 0
    assert main(["report", str(plain), "--format", "csv", "-o", str(tmp_path / "plain.csv")]) == 0
    assert "second_opinion" not in (tmp_path / "plain.csv").read_text().splitlines()[0]
    older = sqlite3.connect(plain / "case.sqlite")
    older.execute("DROP TABLE second_opinions")  # as a case of minorage before 0.6 is
    older.commit()
    older.close()
    grid = create_app(plain, "examiner", "tok3n", 5000).test_client().get("/tok3n/", headers={"Host": "127.0.0.1:5000"})
    assert grid.status_code == 200 and "second opinion" not in grid.get_data(as_text=True)
    assert main(["report", str(plain), "--format", "json", "-o", str(tmp_path / "plain.json")]) == 0


@pytest.mark.slow
def test_evaluate_in_scenes_applies_the_second_opinion(joined, small_dataset, capsys):
    """`evaluate --scenes`: the second opinion reads the normal faces found (not those the
    eye-bar test calls barred), and its veto changes no age, only flags."""
    import json

    from minorage.cli import main

    _, data, _, _ = small_dataset
    results = []
    for model in (DEFAULT, str(joined)):
        assert main(["evaluate", "--model", model, "--data", str(data), "--scenes", "16", "--format", "json", "--bootstrap", "0"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    plain, second = results
    assert "second_opinion" not in plain["org"]
    assert second["org"]["second_opinion"]["read"] > 0.9 and second["ocl"]["second_opinion"]["read"] < 0.2
    for variant in ("org", "ocl"):
        assert second[variant]["MAE"] == pytest.approx(plain[variant]["MAE"], abs=1e-4)  # runtimes round apart
        assert second[variant]["scenes"]["found"] == plain[variant]["scenes"]["found"]


@pytest.mark.slow
def test_evaluate_on_stored_faces_finds_them_again_for_the_second_opinion(joined, small_dataset, capsys):
    """`evaluate` on the stored faces: each normal face is found again in its photo for the
    second opinion's chip, the barred ones are not read; the ages are the model's own."""
    import json

    from minorage.cli import main

    _, data, _, _ = small_dataset
    results = []
    for model in (DEFAULT, str(joined)):
        assert main(["evaluate", "--model", model, "--data", str(data), "--format", "json", "--bootstrap", "0"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    plain, second = results
    assert second["org"]["second_opinion"]["read"] > 0.95 and "second_opinion" not in second["ocl"]
    assert second["org"]["MAE"] == pytest.approx(plain["org"]["MAE"])
    assert second["ocl"]["minor_recall"] == pytest.approx(plain["ocl"]["minor_recall"])
    assert main(["evaluate", "--model", str(joined), "--data", str(data), "--bootstrap", "0", "--variant", "org"]) == 0
    assert "Org (normal faces)" in capsys.readouterr().out  # the Markdown report takes the extra entry


@pytest.mark.slow
def test_a_blended_model_is_calibrated_at_the_ages_it_reports(blended, small_dataset, tmp_path, capsys):
    """`calibrate` on a model that blends a second opinion: each part's p_minor and interval are
    the fit, by hand, of the blended ages of the calibration half's real faces (half the second
    network's age on open eyes, a quarter on barred ones), not of the networks' own; the second
    opinion and the weights are kept, and `evaluate` checks the fit at the same ages."""
    import json

    from minorage import AgeEstimator
    from minorage.cli import main
    from minorage.paper.calibration import CALIBRATION, fit, half_of
    from minorage.paper.evaluation import second_opinions
    from minorage.paper.store import load_faces

    _, data, _, _ = small_dataset
    out = tmp_path / "calibrated.safetensors"
    assert main(["calibrate", "--model", str(blended), "--data", str(data), "--out", str(out)]) == 0
    capsys.readouterr()
    assert out.read_bytes() == blended.read_bytes()  # the same weights, second opinion included
    model, plain = AgeEstimator.from_pretrained(str(out)), AgeEstimator.from_pretrained(str(blended))
    assert model.card.second_opinion["weight"] == 0.5 and model.opinion is not None
    for variant, kind, weight in (("org", "normal", 0.5), ("ocl", "barred", 0.25)):
        faces = load_faces(data, "test", variant)
        faces = faces.subset(half_of(faces.ids.tolist()) == CALIBRATION)
        opinions = second_opinions(plain, data, faces.ids, barred=variant == "ocl")
        for part, calibrations in ((plain, model.calibration), (plain.edge, model.edge.calibration)):
            assert calibrations.fitted_on["second_opinion_weight"] == {"normal": 0.5, "barred": 0.25}
            own = part.predict(faces.faces).astype(float)
            stored = getattr(calibrations, kind)
            by_hand = fit((1 - weight) * own + weight * opinions, faces.ages, 25.0, stored.band, stored.width)
            assert stored.slope == pytest.approx(by_hand.slope) and stored.intercept == pytest.approx(by_hand.intercept)
            assert stored.estimate_high == pytest.approx(by_hand.estimate_high)
            assert stored.intercept != pytest.approx(fit(own, faces.ages, 25.0, stored.band, stored.width).intercept)
    assert main(["evaluate", "--model", str(out), "--data", str(data), "--format", "json", "--bootstrap", "0"]) == 0
    checked = json.loads(capsys.readouterr().out)["calibration_check"]
    assert checked["org"]["n"] + model.edge.calibration.fitted_on["faces"]["normal"]["faces"] == len(load_faces(data, "test", "org"))


def test_points_placed_in_a_known_box_are_the_detectors_own(some_faces, detector):
    """Real photos: O-Net's points in the box the detector found lie within a tenth of the face's
    width of the points the whole detection gave."""
    for path in some_faces[:8]:
        photo = cv2.imread(str(path))
        face = main_face(detector.detect(photo), photo.shape)
        placed = detector.points_at(photo, np.array(face.box))[0]
        assert np.abs(placed - face.points).max() < 0.1 * face.width, path.name


def test_a_template_data_set_stores_chips_on_dlibs_template(some_faces, detector):
    """`dataset build --template`: each real face and its eye-barred twin are stored as the chip
    the detector's own points give (the bar darkening the eyes' band of the chip only), the
    framing survives a card's round trip, and framed boxes refuse it with a message that says why."""
    from minorage.config import Framing
    from minorage.faces.framing import frame_face
    from minorage.faces.occlusion import occlude
    from minorage.paper.build import prepare_face

    framing = Framing(margin=0.2, template=True)
    assert Framing.from_dict(framing.to_dict()) == framing and "template" not in Framing(margin=0.2).to_dict()
    eye_row = round((0.2 + TEMPLATE_POINTS[0, 1]) / 1.4 * 64)
    for path in some_faces[:4]:
        photo = cv2.imread(str(path))
        face = main_face(detector.detect(photo), photo.shape)
        prepared = prepare_face(photo, detector, framing)
        assert np.array_equal(prepared.org, template_chip(photo, face.points))
        assert np.array_equal(prepared.ocl, template_chip(occlude(photo, face)[0], face.points))
        band = np.abs(prepared.org.astype(float) - prepared.ocl).mean(axis=(1, 2))
        assert prepared.ocl[eye_row].mean() < 0.5 * prepared.org[eye_row].mean() and band[54:].max() < 1.0, path.name
    with pytest.raises(ValueError, match="five points"):
        frame_face(photo, face.box, framing, face.eyes)

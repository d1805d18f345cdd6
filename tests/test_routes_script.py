"""`scripts/routes_in_scenes.py`: the measurement of a route by where a face's frame lies."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from minorage import AgeEstimator
from minorage.faces.detection import FaceDetector


def _script():
    path = Path(__file__).parents[1] / "scripts" / "routes_in_scenes.py"
    spec = importlib.util.spec_from_file_location("routes_in_scenes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_face_goes_to_the_edge_model_only_above_the_share_asked():
    routes = _script()
    read = {"share": np.array([0.0, 0.04, 0.3]), "edge": np.zeros(3), "model": np.ones(3)}
    assert routes.at_share(read, 0.0)["leaves"].tolist() == [False, True, True]
    assert routes.at_share(read, 0.05)["leaves"].tolist() == [False, False, True]


def test_the_share_chosen_calls_the_fewest_women_minors():
    """By hand, two adult women and a minor, normal and barred alike: any fill sends the second
    woman (a tenth of her frame past the image) to the edge model, which calls her 17; above a
    fifth she stays with the model, which calls her 30. Both shares flag the minor."""
    routes = _script()
    read = {"found": np.ones(3, bool), "share": np.array([0.0, 0.1, 0.3]),
            "edge": np.array([30.0, 17.0, 12.0]), "model": np.array([30.0, 30.0, 30.0])}
    ages, people = np.array([30.0, 40.0, 12.0]), [("female", "White")] * 3
    best, flags = routes.choose_share([read, read], ages, people, [0.2, 0.0], 17.5, per_kind=True)
    assert best == 0.2
    assert flags == {0.0: {"normal": 17.5, "barred": 17.5}, 0.2: {"normal": 17.5, "barred": 17.5}}


def test_the_flags_can_match_the_shipped_route_instead_of_the_edge_model():
    """By hand, three minors: the edge model alone flags two (17.0, 17.0; the third it reads 17.8).
    At share 0.2 all three go to the model (18.0, 18.2, 18.4), which needs 18.3 to flag two. The
    route at share 0 with the model's flag 18.5 flags the two it reads and not the third (the edge
    model's): two again, so 18.3; with the model's flag 17.0 it flags none, so the lowest, 17.5."""
    routes = _script()
    read = {"found": np.ones(3, bool), "share": np.array([0.0, 0.0, 0.1]),
            "edge": np.array([17.0, 17.0, 17.8]), "model": np.array([18.0, 18.2, 18.4])}
    ages, people = np.array([12.0, 13.0, 14.0]), [("female", "White")] * 3
    assert routes.choose_share([read], ages, people, [0.2], 17.5, per_kind=True)[1] == {0.2: {"normal": 18.3}}
    assert routes.choose_share([read], ages, people, [0.2], 17.5, per_kind=True, match={"normal": 18.5})[1] == {0.2: {"normal": 18.3}}
    assert routes.choose_share([read], ages, people, [0.2], 17.5, per_kind=True, match={"normal": 17.0})[1] == {0.2: {"normal": 17.5}}


def test_each_face_is_flagged_against_its_own_routes_threshold():
    """By hand: ages 17 and 18 read by the route's model (flag 18.5) are both flagged; 17 read by
    the edge model (flag 17.5) is flagged, 18 is not. The route's flag is the lowest that flags as
    many minors as the edge model alone."""
    routes = _script()
    read = {"found": np.ones(4, bool), "leaves": np.array([True, True, False, False]),
            "edge": np.array([17.0, 18.0, 18.2, 18.4]), "model": np.array([9.0, 9.0, 17.0, 18.0])}
    assert routes.flagged(read, 17.5, 18.5).tolist() == [True, False, True, True]
    assert routes.routed(read).tolist() == [17.0, 18.0, 17.0, 18.0]
    minors = np.ones(4, bool)
    generous = {**read, "edge": np.array([17.0, 18.0, 18.2, 19.4])}  # the edge model alone flags 3 of 4 at 19.0
    assert routes.choose_flag([read], minors, 17.5) == 17.5  # alone it flags 1 of 4; the route 2 at 17.5
    with pytest.raises(ValueError, match="no minors"):
        routes.choose_flag([read], ~minors, 17.5)
    assert routes.choose_flag([generous], minors, 19.0) == 19.0
    # the edge model alone flags all 4 at 18.5; the route's model reads its last face 18.7, so its
    # flag climbs in tenths until that face is under it
    assert routes.choose_flag([{**read, "model": np.array([9.0, 9.0, 17.0, 18.7])}], minors, 18.5) == 18.8


@pytest.mark.slow
def test_a_route_between_one_model_and_itself_reads_as_that_model(small_dataset, one_part_model):
    """Real photos in scenes: with the same model on both routes the route's ages are that model's,
    and its flag stays the model's own."""
    routes = _script()
    from minorage.paper.in_scenes import photos_of_split

    _, data, _, _ = small_dataset
    model = AgeEstimator.from_pretrained(str(one_part_model))
    rows = [r for r in photos_of_split(data) if float(r["age"]) < 18][:6] + photos_of_split(data, photos=6)
    read = routes.read_scenes(rows, False, FaceDetector(), model, model)
    assert read["found"].sum() >= 10
    assert ((read["share"] >= 0) & (read["share"] < 1)).all()
    for above in (0.0, 0.2):
        assert np.array_equal(routes.routed(routes.at_share(read, above)), read["edge"])
    minors = np.rint([float(r["age"]) for r in rows]) < 18
    assert minors.sum() >= 6
    assert routes.choose_flag([routes.at_share(read, 0.0)], minors, model.minor_below) == model.minor_below


def test_the_script_refuses_a_model_that_has_an_edge_part_already(small_dataset, monkeypatch, capsys):
    """The shipped model routes by frame itself: measuring a route with it as one side would read
    only its main part, so the script says so and stops."""
    routes = _script()
    _, data, _, _ = small_dataset
    monkeypatch.setattr("sys.argv", ["routes_in_scenes.py", "--model", "default", "--edge-model", "default", "--data", str(data),
                                     "--choose-skip", "0"])
    with pytest.raises(SystemExit):
        routes.main()
    assert "edge part" in capsys.readouterr().err

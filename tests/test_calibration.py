"""p_minor and the 90 % age interval: read back by hand-computed examples, fit and checked on
real faces of a built data set, and shipped in the default model's card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minorage import AgeEstimator
from minorage.cli import main
from minorage.model.calibration import Calibration
from minorage.paper.calibration import CALIBRATION, CHECK, coverage_by_group, fit, half_of, reliability, true_ages, wilson
from minorage.paper.store import load_faces

# three true ages 0, 1, 2 ("2 or older"): each holds the estimates in its range
TABLE = Calibration(intercept=0.0, slope=-1.0, estimate_low=(0.0, 0.5, 1.8), estimate_high=(1.0, 2.0, 3.0), band=(0.9, 0.9, 0.9))


def test_interval_is_every_true_age_whose_range_holds_the_estimate():
    low, high = TABLE.interval(np.array([0.2, 0.8, 1.9, 2.5, 9.0]))
    assert low.tolist() == [0, 0, 1, 2, 2]  # 0.8 lies in ages 0 and 1; 1.9 in 1 and 2
    assert high.tolist() == [0, 1, 2, 2, 2]  # 9.0 lies in none: the nearest age's range, 2
    assert TABLE.probability(np.array([0.0]))[0] == pytest.approx(0.5)
    assert TABLE.probability(np.array([2.0]))[0] == pytest.approx(1 / (1 + np.e ** 2))
    assert Calibration.from_dict(json.loads(json.dumps(TABLE.to_dict()))) == TABLE


def test_reliability_and_coverage_by_hand():
    p = np.array([0.1, 0.1, 0.9, 0.9])
    minor = np.array([False, True, True, True])
    table = reliability(p, minor, bins=2)
    assert table == [{"faces": 2, "predicted": pytest.approx(0.1), "observed": 0.5}, {"faces": 2, "predicted": pytest.approx(0.9), "observed": 1.0}]
    cover = coverage_by_group(np.array([3, 4, 17, 40]), np.array([True, False, True, True]))
    assert {g: (c["faces"], c["covered"]) for g, c in cover.items()} == {"0-5": (2, 0.5), "16-17": (1, 1.0), "26+": (1, 1.0)}
    # Wilson's interval by hand: 1 of 2, z^2/n = 1.9208 -> centre 0.5, half-width 1.96 * sqrt(0.125 + 0.2401) / 2.9208 = 0.4055
    assert (cover["0-5"]["low"], cover["0-5"]["high"]) == pytest.approx((0.0945, 0.9055), abs=1e-3)
    assert wilson(90, 100) == pytest.approx((0.8256, 0.9448), abs=1e-3)


def test_halves_are_fixed_by_the_photo_id():
    ids = [f"utkface:{i}" for i in range(2000)]
    halves = half_of(ids)
    assert set(halves) == {CALIBRATION, CHECK} and 0.45 < np.mean(halves == CALIBRATION) < 0.55
    assert half_of(ids[::-1]).tolist() == halves[::-1].tolist()


def test_fit_covers_about_ninety_percent_of_each_age():
    """Ages 0-40 estimated with noise growing with age, capped at the ceiling 25: each age up
    to 25 has its own range, and every age past it is one, "26 or older"."""
    rng = np.random.default_rng(0)
    ages = np.repeat(np.arange(41), 200).astype(float)

    def estimate() -> np.ndarray:
        return np.clip(ages + rng.normal(0, 1 + ages / 10), 0, 25)

    fitted = fit(estimate(), ages, 25.0, band=0.9)
    assert len(fitted.estimate_low) == 27
    assert np.all(np.diff(fitted.probability(np.arange(26))) < 0)  # older estimate, less likely a minor
    assert fitted.probability(np.array([3.0]))[0] > 0.95 and fitted.probability(np.array([25.0]))[0] < 0.05
    low, high = fitted.interval(estimate())
    covered = (true_ages(ages, 25.0) >= low) & (true_ages(ages, 25.0) <= high)
    assert all(covered[ages == a].mean() >= 0.85 for a in range(26)) and covered[ages > 25].mean() >= 0.85
    assert high.max() == 26 and low[ages == 40].min() < 26  # "or older" reached, and read as a range from below
    with pytest.raises(ValueError, match="no faces older than the model's ceiling"):
        fit(estimate()[ages <= 25], ages[ages <= 25], 25.0)


def test_the_shipped_model_is_calibrated():
    estimator = AgeEstimator.from_pretrained("default")
    calibrations = [part.calibration for part in (estimator, estimator.edge) if part is not None]  # each part its own
    assert all(c is not None and c.fitted_on["half"] == CALIBRATION for c in calibrations)
    for kind in (k for calibration in calibrations for k in (calibration.normal, calibration.barred)):
        p = kind.probability(np.array([5.0, 16.0, 25.0]))
        assert p[0] > 0.95 > p[1] > p[2] and p[2] < 0.05
        low, high = kind.interval(np.array([5.0, 25.0]))
        assert low[0] <= 5 <= high[0] and high[1] == 26  # 26: "26 or older"


@pytest.mark.slow
def test_calibrate_then_evaluate_checks_on_the_other_half(small_dataset, one_part_model, tmp_path, capsys):
    _, data, _, _ = small_dataset
    out = tmp_path / "calibrated.safetensors"
    both = tmp_path / "both.safetensors"  # the shipped model: each of its two parts fit on its own ages
    assert main(["calibrate", "--model", "default", "--data", str(data), "--out", str(both)]) == 0
    assert "(edge part)" in capsys.readouterr().out
    joined = json.loads(both.with_suffix(".json").read_text())
    main_fit, edge_fit = joined["calibration"], joined["edge"]["calibration"]
    assert main_fit["fitted_on"]["dataset"] == edge_fit["fitted_on"]["dataset"] == str(data)
    assert main_fit["normal"]["slope"] != edge_fit["normal"]["slope"]
    assert main(["calibrate", "--model", str(one_part_model), "--data", str(data), "--out", str(out)]) == 0
    assert "each judged by a fit on the other folds" in capsys.readouterr().out
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["calibration"]["fitted_on"]["dataset"] == str(data)
    assert out.read_bytes() == one_part_model.read_bytes()  # the same weights, a new card
    main(["evaluate", "--model", str(out), "--data", str(data), "--format", "json", "--bootstrap", "0"])
    checked = json.loads(capsys.readouterr().out)["calibration_check"]
    for variant in ("org", "ocl"):
        n = checked[variant]["n"]
        assert n > 0 and sum(row["faces"] for row in checked[variant]["reliability"]) == n
        assert sum(g["faces"] for g in checked[variant]["coverage"].values()) == n
    main(["evaluate", "--model", str(out), "--data", str(data), "--bootstrap", "0"])
    table = capsys.readouterr().out
    assert "Reliability of p_minor, Org (normal faces)" in table and "90 % age interval coverage, Ocl" in table
    # the halves swapped: fit on the check half, judged on the calibration half, each face once
    swapped = tmp_path / "swapped.safetensors"
    assert main(["calibrate", "--model", str(one_part_model), "--data", str(data), "--out", str(swapped), "--half", "check"]) == 0
    capsys.readouterr()
    assert json.loads(swapped.with_suffix(".json").read_text())["calibration"]["fitted_on"]["half"] == CHECK
    main(["evaluate", "--model", str(swapped), "--data", str(data), "--format", "json", "--bootstrap", "0"])
    other = json.loads(capsys.readouterr().out)["calibration_check"]
    fitted_on = card["calibration"]["fitted_on"]["faces"]
    assert other["org"]["n"] == fitted_on["normal"]["faces"] and other["ocl"]["n"] == fitted_on["barred"]["faces"]
    assert other["org"]["n"] + checked["org"]["n"] == len(load_faces(data, "test", "org"))

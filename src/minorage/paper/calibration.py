"""Calibrating a trained model: `p_minor` and the 90 % age interval fit on faces it never saw,
and checked on other faces it never saw.

The photos: a model trained on a data set's training split has seen none of its test split,
so the test split is cut in two halves by a hash of each photo's id, fixed before any fit:
calibration is fit on one half (`CALIBRATION`), `check` judges it on the other, and both
leave out the photos `exclude` names (those a model saw in another data set).

- `p_minor`: logistic regression of "true age under 18" on the estimate. Chosen by
  cross-validation inside the calibration half over isotonic regression, whose steps overfit
  the few faces where the probability falls (out-of-fold deciles off by up to 6.5 points,
  against 2.0 for the logistic curve).
- The interval: per true age, the central band of its faces' estimates (ages with
  fewer than MIN_PER_AGE faces borrow their neighbours'; the band's share chosen out of fold
  so that the intervals cover 90 % of faces in every age group), moved outwards by split conformal's
  finite-sample correction; a true age above the model's ceiling counts as the ceiling
  ("25 or older"). Read back (`model.calibration`), an estimate's interval is every true age
  whose range holds it. Why not residual quantiles per estimate: adults outnumber every
  group of minors, so such intervals covered 16-17-year-olds in only 55-65 % of cases.
The share of minors among the calibration faces sets the probability's base rate: on a
collection with far fewer minors the same estimate is less likely a minor's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from minorage import groups
from minorage.model.calibration import Calibration, Calibrations
from minorage.model.estimator import AgeEstimator
from minorage.paper.evaluation import VARIANT_LABELS, photo_ids
from minorage.paper.readers import UNKNOWN
from minorage.paper.store import load_faces, photo_demographics

CALIBRATION, CHECK = "calibration", "check"
COVERAGE = 0.9
MIN_PER_AGE = 40  # faces behind each true age's range of estimates (neighbouring ages join in)
BANDS = tuple(float(b) for b in np.round(np.arange(0.60, 0.901, 0.02), 2))  # the shares of each age's estimates tried
LOGISTIC_C = 100.0  # next to no regularisation: two parameters, over a thousand faces
VARIANT_KIND = {"org": "normal", "ocl": "barred"}


def half_of(ids: Iterable[str]) -> np.ndarray:
    """For each photo id, the half it belongs to (CALIBRATION or CHECK), by a hash of the id."""
    return np.array([CALIBRATION if hashlib.sha256(i.encode()).digest()[0] % 2 == 0 else CHECK for i in ids])


def fit(estimates: np.ndarray, ages: np.ndarray, ceiling: float, band: float = COVERAGE) -> Calibration:
    """One kind of face's calibration from the model's estimates and the true ages; `band`:
    the share of each true age's estimates its range holds."""
    from sklearn.linear_model import LogisticRegression

    estimates, ages = np.asarray(estimates, float), np.minimum(np.asarray(ages, float), ceiling)
    logistic = LogisticRegression(C=LOGISTIC_C).fit(estimates[:, None], ages < groups.MINOR_LIMIT)
    low, high = [], []
    for age in range(int(ceiling) + 1):
        near = _neighbours(ages, age)
        low.append(_conformal(estimates[near], (1 - band) / 2))
        high.append(_conformal(estimates[near], (1 + band) / 2))
    return Calibration(float(logistic.intercept_[0]), float(logistic.coef_[0, 0]), tuple(low), tuple(high), band)


def _neighbours(ages: np.ndarray, age: int) -> np.ndarray:
    """The faces of one true age, widened a year at a time to its neighbours until there are
    MIN_PER_AGE of them."""
    for width in range(0, 30):
        near = np.abs(ages - age) <= width
        if near.sum() >= MIN_PER_AGE:
            return near
    return np.ones(len(ages), bool)


def _conformal(values: np.ndarray, level: float) -> float:
    """The quantile at `level`, moved outwards by split conformal's finite-sample correction."""
    n = len(values)
    shifted = np.clip((np.ceil((n + 1) * level) if level > 0.5 else np.floor((n + 1) * level)) / n, 0, 1)
    return float(np.quantile(values, shifted, method="higher" if level > 0.5 else "lower"))


def _faces(estimator: AgeEstimator, data_dir: Path, variant: str, half: str, exclude: Iterable[str]):
    faces = load_faces(data_dir, "test", variant)
    left_out, _ = photo_ids(data_dir, exclude)
    keep = (half_of(faces.ids.tolist()) == half) & ~np.isin(faces.ids, list(left_out))
    faces = faces.subset(keep)
    return faces, estimator.predict(faces.faces)


def calibrate(estimator: AgeEstimator, data_dir: Path, exclude: Iterable[str] = ()) -> tuple[Calibrations, dict[str, dict]]:
    """The model's calibrations, fit on the calibration half of the data set's test split, and
    the out-of-fold tables of the band chosen for each kind of face (`choose_band`)."""
    exclude, people, ceiling = list(exclude), photo_demographics(data_dir), float(estimator.age_range[1])
    fitted, counts, tables = {}, {}, {}
    for variant, kind in VARIANT_KIND.items():
        faces, estimates = _faces(estimator, data_dir, variant, CALIBRATION, exclude)
        band, tables[variant] = choose_band(estimates, faces.ages, _sexes(people, faces.ids), ceiling)
        fitted[kind] = fit(estimates, faces.ages, ceiling, band)
        counts[kind] = {"faces": len(faces), "minors": int(np.sum(faces.ages < groups.MINOR_LIMIT)), "band": float(band)}
    record = {"dataset": str(data_dir), "split": "test", "half": CALIBRATION, "rule": "sha256(photo id)[0] even",
              "excluded": len(exclude), "faces": counts, "method": "logistic p_minor on the estimate; Neyman band of the "
              f"estimates per true age (split-conformal quantiles), its share chosen out of fold for {COVERAGE:g} coverage"}
    return Calibrations(fitted["normal"], fitted["barred"], record), tables


def choose_band(estimates: np.ndarray, ages: np.ndarray, sexes: np.ndarray, ceiling: float, folds: int = 5) -> tuple[float, dict]:
    """The band whose intervals, each face judged by a calibration fit on the other folds,
    come nearest to COVERAGE in the worst age group, and its out-of-fold tables. Why: the
    union of neighbouring ages' ranges covers more than each range alone."""
    fold = np.random.default_rng(0).permutation(len(ages)) % folds
    best = None
    for band in BANDS:
        p, low, high = (np.zeros(len(ages)) for _ in range(3))
        for k in range(folds):
            part = fold == k
            calibration = fit(estimates[~part], ages[~part], ceiling, band)
            p[part] = calibration.probability(estimates[part])
            low[part], high[part] = calibration.interval(estimates[part])
        table = judge(p, low, high, ages, sexes, ceiling)
        worst = max(abs(g["covered"] - COVERAGE) for g in table["coverage"].values())
        if best is None or worst < best[0]:
            best = (worst, band, table)
    return best[1], best[2]


def check(estimator: AgeEstimator, data_dir: Path, exclude: Iterable[str] = ()) -> dict[str, dict]:
    """The model's calibration judged on the check half: per variant, the reliability table
    (predicted p_minor against the observed share of minors, per decile of faces) and the
    interval's coverage per true age group, overall and per sex."""
    calibrations = estimator.calibration
    if calibrations is None:
        raise ValueError("this model has no calibration: run `minorage calibrate` first")
    exclude, people, ceiling = list(exclude), photo_demographics(data_dir), float(estimator.age_range[1])
    results = {}
    for variant, kind in VARIANT_KIND.items():
        faces, estimates = _faces(estimator, data_dir, variant, CHECK, exclude)
        calibration = calibrations.of(kind == "barred")
        results[variant] = judge(calibration.probability(estimates), *calibration.interval(estimates),
                                 faces.ages, _sexes(people, faces.ids), ceiling)
    return results


def check_if_calibrated_on(estimator: AgeEstimator, data_dir: Path, exclude: Iterable[str] = ()) -> dict[str, dict] | None:
    """`check`, for a model calibrated on this data set (else None: its check half is not known)."""
    fitted_on = estimator.calibration.fitted_on.get("dataset") if estimator.calibration else None
    if fitted_on is None or Path(fitted_on).resolve() != Path(data_dir).resolve():
        return None
    return check(estimator, data_dir, exclude)


def _sexes(people: dict, ids: np.ndarray) -> np.ndarray:
    return np.array([people.get(i, (UNKNOWN, UNKNOWN))[0] for i in ids.tolist()])


def judge(p: np.ndarray, low: np.ndarray, high: np.ndarray, ages: np.ndarray, sexes: np.ndarray, ceiling: float) -> dict:
    """The reliability table and the interval's coverage of one set of faces."""
    capped = np.minimum(ages, ceiling)
    covered = (capped >= low - 1e-6) & (capped <= high + 1e-6)
    return {
        "n": len(ages),
        "reliability": reliability(p, ages < groups.MINOR_LIMIT),
        "coverage": coverage_by_group(ages, covered),
        "coverage_by_sex": {s: coverage_by_group(ages[sexes == s], covered[sexes == s]) for s in sorted(set(sexes))},
    }


def reliability(p: np.ndarray, minor: np.ndarray, bins: int = 10) -> list[dict]:
    """Faces sorted by p_minor in `bins` groups of equal size: each group's mean predicted
    probability against its observed share of minors."""
    order = np.argsort(p, kind="stable")
    return [{"faces": len(part), "predicted": float(np.mean(p[part])), "observed": float(np.mean(minor[part]))}
            for part in np.array_split(order, bins) if len(part)]


def coverage_by_group(ages: np.ndarray, covered: np.ndarray) -> dict[str, dict]:
    """The share of faces whose true age lies in the interval, per true age group."""
    index = groups.group_index(ages)
    return {name: {"faces": int(np.sum(index == i)), "covered": float(np.mean(covered[index == i]))}
            for i, name in enumerate(groups.ALL_GROUPS) if np.any(index == i)}


def as_markdown(results: dict[str, dict], where: str = "of the check half") -> str:
    """The reliability tables and the coverage tables, one per variant."""
    lines = []
    for variant, result in results.items():
        label = VARIANT_LABELS.get(variant, variant)
        lines += ["", f"Reliability of p_minor, {label}, {result['n']} faces {where} (deciles of faces by p_minor):", "",
                  "| decile | faces | predicted | observed | difference |", "|---|---|---|---|---|"]
        for i, row in enumerate(result["reliability"], 1):
            lines.append(f"| {i} | {row['faces']} | {row['predicted']:.1%} | {row['observed']:.1%} | {row['observed'] - row['predicted']:+.1%} |")
        names = list(result["coverage"])
        lines += ["", f"90 % age interval coverage, {label}, by true age group:", "",
                  "| faces | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        rows = [("all", result["coverage"])] + list(result["coverage_by_sex"].items())
        for who, table in rows:
            lines.append(f"| {who} | " + " | ".join(f"{table[g]['covered']:.1%} ({table[g]['faces']})" if g in table else "–" for g in names) + " |")
    return "\n".join(lines).strip() + "\n"

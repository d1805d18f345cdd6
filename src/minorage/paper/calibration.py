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
- The interval: per true age, the central band of its faces' estimates, read as the age
  plus quantiles of the errors (estimate - age) of faces of that age and, with weights falling
  as a Gaussian of `width` years, of the ages around it (a single age holds too few faces for
  its own tails), moved outwards by split conformal's finite-sample correction; the band's
  share (one per age group) and the width chosen out of fold so that the intervals cover 90 %
  of faces in every age group. A true age above the model's ceiling counts as the ceiling
  ("25 or older"), its faces (estimates capped) kept among themselves. Read back
  (`model.calibration`), an estimate's interval is every true age
  whose range holds it. Why not residual quantiles per estimate: adults outnumber every
  group of minors, so such intervals covered 16-17-year-olds in only 55-65 % of cases.
The share of minors among the calibration faces sets the probability's base rate: on a
collection with far fewer minors the same estimate is less likely a minor's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
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
BANDS = tuple(float(b) for b in np.round(np.arange(0.70, 0.961, 0.02), 2))  # the shares of each age's estimates tried
WIDTHS = (1.0, 0.5, 1.5, 2.0, 3.0)  # years: how far an age borrows its neighbours' errors (the first: `fit`'s default)
LOGISTIC_C = 100.0  # next to no regularisation: two parameters, over a thousand faces
VARIANT_KIND = {"org": "normal", "ocl": "barred"}


def half_of(ids: Iterable[str]) -> np.ndarray:
    """For each photo id, the half it belongs to (CALIBRATION or CHECK), by a hash of the id."""
    return np.array([CALIBRATION if hashlib.sha256(i.encode()).digest()[0] % 2 == 0 else CHECK for i in ids])


def fit(estimates: np.ndarray, ages: np.ndarray, ceiling: float, band: float | Sequence[float] = COVERAGE,
        width: float = WIDTHS[0]) -> Calibration:
    """One kind of face's calibration from the model's estimates and the true ages; `band`:
    the share of each true age's estimates its range holds (one share, or one per true age
    0..ceiling); `width`: how far (in years, a Gaussian's spread) an age borrows its
    neighbours' errors."""
    from sklearn.linear_model import LogisticRegression

    estimates, ages = np.asarray(estimates, float), np.minimum(np.asarray(ages, float), ceiling)
    logistic = LogisticRegression(C=LOGISTIC_C).fit(estimates[:, None], ages < groups.MINOR_LIMIT)
    bands = _per_age(band, ceiling)
    low, high = _ranges(estimates, ages, ceiling, bands, width)
    return Calibration(float(logistic.intercept_[0]), float(logistic.coef_[0, 0]), low, high, bands, width)


def _per_age(band: float | Sequence[float], ceiling: float) -> tuple[float, ...]:
    return tuple(float(b) for b in band) if isinstance(band, Sequence) else (float(band),) * (int(ceiling) + 1)


def _ranges(estimates: np.ndarray, ages: np.ndarray, ceiling: float, bands: Sequence[float], width: float) -> tuple[tuple, tuple]:
    """Per true age 0..ceiling, the range of estimates that holds its central share of them."""
    errors, top = estimates - ages, ages >= ceiling
    low, high = [], []
    for age, band in enumerate(bands):
        # the ceiling's faces ("that age or older", their estimates capped) only among themselves
        weights = top.astype(float) if age >= ceiling else np.where(top, 0.0, np.exp(-0.5 * ((ages - age) / width) ** 2))
        low.append(age + _conformal(errors, weights, (1 - band) / 2))
        high.append(age + _conformal(errors, weights, (1 + band) / 2))
    return tuple(low), tuple(high)


def _conformal(values: np.ndarray, weights: np.ndarray, level: float) -> float:
    """The weighted quantile at `level`, moved outwards by split conformal's finite-sample
    correction for the weights' effective number of faces."""
    order = np.argsort(values, kind="stable")
    values, weights = values[order], weights[order]
    n = weights.sum() ** 2 / max(float(np.sum(weights**2)), 1e-12)
    shifted = np.clip((np.ceil((n + 1) * level) if level > 0.5 else np.floor((n + 1) * level)) / n, 0, 1)
    cumulative = np.cumsum(weights) / weights.sum()
    index = np.searchsorted(cumulative, shifted - 1e-12, side="left") if level > 0.5 else np.searchsorted(cumulative, shifted + 1e-12, side="right") - 1
    return float(values[np.clip(index, 0, len(values) - 1)])


def _faces(estimator: AgeEstimator, data_dir: Path, variant: str, half: str, exclude: Iterable[str]):
    faces = load_faces(data_dir, "test", variant)
    left_out, _ = photo_ids(data_dir, exclude)
    keep = (half_of(faces.ids.tolist()) == half) & ~np.isin(faces.ids, list(left_out))
    faces = faces.subset(keep)
    return faces, estimator.predict(faces.faces)


def calibrate(estimator: AgeEstimator, data_dir: Path, exclude: Iterable[str] = (),
              half: str = CALIBRATION) -> tuple[Calibrations, dict[str, dict]]:
    """The model's calibrations, fit on one half of the data set's test split (the calibration
    half; `half=CHECK` swaps the halves, to judge the same procedure the other way round), and
    the out-of-fold tables of the band chosen for each kind of face (`choose_band`)."""
    exclude, people, ceiling = list(exclude), photo_demographics(data_dir), float(estimator.age_range[1])
    fitted, counts, tables = {}, {}, {}
    for variant, kind in VARIANT_KIND.items():
        faces, estimates = _faces(estimator, data_dir, variant, half, exclude)
        (band, width), tables[variant] = choose_band(estimates, faces.ages, _sexes(people, faces.ids), ceiling)
        fitted[kind] = fit(estimates, faces.ages, ceiling, band, width)
        shares = {groups.ALL_GROUPS[g]: share for g, share in zip(band_groups(ceiling), band)}  # each group's one share
        counts[kind] = {"faces": len(faces), "minors": int(np.sum(faces.ages < groups.MINOR_LIMIT)), "bands": shares, "width": width}
    record = {"dataset": str(data_dir), "split": "test", "half": half, "rule": f"sha256(photo id)[0] {'even' if half == CALIBRATION else 'odd'}",
              "excluded": len(exclude), "faces": counts, "method": "logistic p_minor on the estimate; Neyman band of the "
              "estimates per true age (split-conformal quantiles of the errors, neighbouring ages' errors weighted by a Gaussian of "
              f"`width` years), its share per age group and the width chosen out of fold for {COVERAGE:g} coverage"}
    return Calibrations(fitted["normal"], fitted["barred"], record), tables


def choose_band(estimates: np.ndarray, ages: np.ndarray, sexes: np.ndarray, ceiling: float,
                folds: int = 5) -> tuple[tuple[tuple[float, ...], float], dict]:
    """The bands (one share per age group, spread over its ages) and the width whose
    intervals, each face judged by a calibration fit on the other folds, come nearest to
    COVERAGE in every age group, and their out-of-fold tables.

    First one share for all groups and the width, for the worst group; then each group's
    share in turn, twice round, for that group's own coverage. Why per group: the union of
    neighbouring ages' ranges fills more gaps in some groups than in others, and the adults at
    the ceiling are one crowd, so one share cannot cover every group alike."""
    fold = np.random.default_rng(0).permutation(len(ages)) % folds
    capped = np.minimum(np.asarray(ages, float), ceiling)
    p = np.zeros(len(ages))
    for k in range(folds):  # p_minor does not depend on the bands: fit once per fold
        p[fold == k] = fit(estimates[fold != k], ages[fold != k], ceiling).probability(estimates[fold == k])

    def out_of_fold(bands: tuple[float, ...], width: float) -> dict:
        low, high = np.zeros(len(ages)), np.zeros(len(ages))
        for k in range(folds):
            part = fold == k
            ranges = _ranges(estimates[~part], capped[~part], ceiling, bands, width)
            low[part], high[part] = Calibration(0.0, 0.0, *ranges).interval(estimates[part])
        return judge(p, low, high, ages, sexes, ceiling)

    def worst(table: dict) -> float:
        return max(abs(g["covered"] - COVERAGE) for g in table["coverage"].values())

    _, bands, width = min(((worst(out_of_fold(_per_age(b, ceiling), w)), _per_age(b, ceiling), w) for w in WIDTHS for b in BANDS),
                          key=lambda t: t[0])
    group_of = band_groups(ceiling)
    for _ in range(2):
        for g, name in enumerate(groups.ALL_GROUPS):
            tried = []
            for b in BANDS:
                candidate = tuple(b if group_of[age] == g else share for age, share in enumerate(bands))
                covered = out_of_fold(candidate, width)["coverage"].get(name, {"covered": COVERAGE})["covered"]
                tried.append((abs(covered - COVERAGE), b, candidate))
            bands = min(tried, key=lambda t: t[:2])[2]
    return (bands, width), out_of_fold(bands, width)


def band_groups(ceiling: float) -> np.ndarray:
    """The age group (index into ALL_GROUPS) whose share each true age 0..ceiling takes; the
    ceiling ("that age or older", mostly adults past it) is a group of its own, the adults'."""
    of = groups.group_index(np.arange(int(ceiling) + 1))
    if ceiling <= groups.YOUNG_ADULT_MAX:
        of[-1] = len(groups.ALL_GROUPS) - 1
    return of


def check(estimator: AgeEstimator, data_dir: Path, exclude: Iterable[str] = ()) -> dict[str, dict]:
    """The model's calibration judged on the half it was not fit on (normally the check half):
    per variant, the reliability table (predicted p_minor against the observed share of minors,
    per decile of faces) and the interval's coverage per true age group, overall and per sex."""
    calibrations = estimator.calibration
    if calibrations is None:
        raise ValueError("this model has no calibration: run `minorage calibrate` first")
    other = CALIBRATION if calibrations.fitted_on.get("half") == CHECK else CHECK
    exclude, people, ceiling = list(exclude), photo_demographics(data_dir), float(estimator.age_range[1])
    results = {}
    for variant, kind in VARIANT_KIND.items():
        faces, estimates = _faces(estimator, data_dir, variant, other, exclude)
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
    """The share of faces whose true age lies in the interval, per true age group, with its
    95 % (Wilson) interval: a group of 40 faces cannot tell 85 % coverage from 95 %."""
    index = groups.group_index(ages)
    return {name: {"faces": int(np.sum(index == i)), "covered": float(np.mean(covered[index == i])),
                   **dict(zip(("low", "high"), wilson(int(np.sum(covered[index == i])), int(np.sum(index == i)))))}
            for i, name in enumerate(groups.ALL_GROUPS) if np.any(index == i)}


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a share `hits` / `n`."""
    share, spread = hits / n, z * z / n
    centre = (share + spread / 2) / (1 + spread)
    half = z * np.sqrt(share * (1 - share) / n + spread / (4 * n)) / (1 + spread)
    return float(centre - half), float(centre + half)


def as_markdown(results: dict[str, dict], where: str = "of the half it was not fit on") -> str:
    """The reliability tables and the coverage tables, one per variant."""
    lines = []
    for variant, result in results.items():
        label = VARIANT_LABELS.get(variant, variant)
        lines += ["", f"Reliability of p_minor, {label}, {result['n']} faces {where} (deciles of faces by p_minor):", "",
                  "| decile | faces | predicted | observed | difference |", "|---|---|---|---|---|"]
        for i, row in enumerate(result["reliability"], 1):
            lines.append(f"| {i} | {row['faces']} | {row['predicted']:.1%} | {row['observed']:.1%} | {row['observed'] - row['predicted']:+.1%} |")
        names = list(result["coverage"])
        lines += ["", f"90 % age interval coverage, {label}, by true age group (faces; 95 % interval of the share):", "",
                  "| faces | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        rows = [("all", result["coverage"])] + list(result["coverage_by_sex"].items())
        for who, table in rows:
            lines.append(f"| {who} | " + " | ".join(_covered(table[g]) if g in table else "–" for g in names) + " |")
    return "\n".join(lines).strip() + "\n"


def _covered(cell: dict) -> str:
    return f"{cell['covered']:.1%} ({cell['faces']}; {cell['low']:.0%}-{cell['high']:.0%})"


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
  its own tails), moved outwards by split conformal's finite-sample correction. True ages
  past the model's ceiling count as one age, "older" (26, "26 or older"), its faces (estimates
  capped) kept among themselves; the ceiling's own age, 25, is an age like the others. Two
  shares only, chosen out of fold with the width: one for every age up to the ceiling, one
  for the older. Read back (`model.calibration`), an estimate's interval is every true age
  whose range holds it. Why so few choices: a share chosen per age group on a few hundred
  minors fit that half's noise (fit on one half, the barred 6-25-year-olds of the other were
  covered 3-5 points short); and why 25 apart: counted with the older adults, whose estimates
  pile up at the ceiling, 25-year-olds were covered 74-86 %. Why not residual quantiles per
  estimate: adults outnumber every group of minors, so such intervals covered
  16-17-year-olds in only 55-65 % of cases.
The share of minors among the calibration faces sets the probability's base rate: on a
collection with far fewer minors the same estimate is less likely a minor's.

Each part of a joined model (its main part and, where it has one, the edge part) is fit on the
ages it reports: with the model's second opinion's share blended in where the model blends one
(`AgeEstimator.blended`), since `p_minor` and the interval are read at that age, not at the
network's own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from minorage import groups
from minorage.model.calibration import Calibration, Calibrations
from minorage.model.estimator import AgeEstimator, opinion_setting
from minorage.paper.evaluation import VARIANT_LABELS, photo_ids, second_opinions
from minorage.paper.readers import UNKNOWN
from minorage.paper.store import FaceSet, load_faces, photo_demographics

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
    0..ceiling + 1, the last "older"); `width`: how far (in years, a Gaussian's spread) an age
    borrows its neighbours' errors."""
    from sklearn.linear_model import LogisticRegression

    estimates, ages = np.asarray(estimates, float), np.asarray(ages, float)
    logistic = LogisticRegression(C=LOGISTIC_C).fit(estimates[:, None], ages < groups.MINOR_LIMIT)
    bands = _per_age(band, ceiling)
    low, high = _ranges(estimates, ages, ceiling, bands, width)
    return Calibration(float(logistic.intercept_[0]), float(logistic.coef_[0, 0]), low, high, bands, width)


def true_ages(ages: np.ndarray, ceiling: float) -> np.ndarray:
    """The true ages an interval speaks of: 0..ceiling, and every age past the ceiling as
    ceiling + 1 ("that age or older")."""
    return np.minimum(np.asarray(ages, float), ceiling + 1)


def _per_age(band: float | Sequence[float], ceiling: float) -> tuple[float, ...]:
    return tuple(float(b) for b in band) if isinstance(band, Sequence) else (float(band),) * (int(ceiling) + 2)


def _ranges(estimates: np.ndarray, ages: np.ndarray, ceiling: float, bands: Sequence[float], width: float) -> tuple[tuple, tuple]:
    """Per true age 0..ceiling + 1, the range of estimates that holds its central share of them."""
    ages = true_ages(ages, ceiling)
    errors, older = estimates - ages, ages > ceiling
    if not older.any():
        raise ValueError(f"no faces older than the model's ceiling ({ceiling:g}) to calibrate the adults' range on")
    low, high = [], []
    for age, band in enumerate(bands):
        # the older faces ("that age or older", their estimates capped) only among themselves
        weights = older.astype(float) if age > ceiling else np.where(older, 0.0, np.exp(-0.5 * ((ages - age) / width) ** 2))
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


def parts(estimator: AgeEstimator) -> dict[str, AgeEstimator]:
    """The parts of a model that carry a calibration of their own: "main" and, where the model
    has one, "edge"."""
    return {"main": estimator, **({"edge": estimator.edge} if estimator.edge is not None else {})}


def _faces(estimator: AgeEstimator, data_dir: Path, variant: str, half: str,
           exclude: Iterable[str]) -> tuple[FaceSet, np.ndarray | None]:
    """One half's stored faces of a variant, and the second opinion's age of each where the
    model blends one into that kind of face's age (else None)."""
    faces = load_faces(data_dir, "test", variant)
    left_out, _ = photo_ids(data_dir, exclude)
    keep = (half_of(faces.ids.tolist()) == half) & ~np.isin(faces.ids, list(left_out))
    faces, barred = faces.subset(keep), variant == "ocl"
    blends = estimator.opinion is not None and float(opinion_setting(estimator.card.second_opinion, barred, "weight")) > 0
    return faces, second_opinions(estimator, data_dir, faces.ids, barred=barred) if blends else None


def _reported(estimator: AgeEstimator, part: AgeEstimator, faces: FaceSet, opinions: np.ndarray | None, variant: str) -> np.ndarray:
    """The ages one part of the model reports for these faces: its own, blended with the second opinion's."""
    return estimator.blended(part.predict(faces.faces), variant == "ocl", opinions)


def calibrate(estimator: AgeEstimator, data_dir: Path, exclude: Iterable[str] = (),
              half: str = CALIBRATION) -> tuple[dict[str, Calibrations], dict[str, dict[str, dict]]]:
    """Each part's calibrations (`parts`), fit on one half of the data set's test split (the
    calibration half; `half=CHECK` swaps the halves, to judge the same procedure the other way
    round) at the ages the part reports, and per part the out-of-fold tables of the bands
    chosen for each kind of face (`choose_band`)."""
    exclude, people = list(exclude), photo_demographics(data_dir)
    read = {variant: _faces(estimator, data_dir, variant, half, exclude) for variant in VARIANT_KIND}
    blended = {VARIANT_KIND[v]: opinion_setting(estimator.card.second_opinion, v == "ocl", "weight").item()
               for v, (_, opinions) in read.items() if opinions is not None}
    calibrations, tables = {}, {}
    for name, part in parts(estimator).items():
        fitted, counts, tables[name] = {}, {}, {}
        ceiling = float(part.age_range[1])
        for variant, kind in VARIANT_KIND.items():
            faces, opinions = read[variant]
            estimates = _reported(estimator, part, faces, opinions, variant)
            (band, width), tables[name][variant] = choose_band(estimates, faces.ages, _sexes(people, faces.ids), ceiling)
            fitted[kind] = fit(estimates, faces.ages, ceiling, band, width)
            counts[kind] = {"faces": len(faces), "minors": int(np.sum(faces.ages < groups.MINOR_LIMIT)),
                            "bands": {f"0-{ceiling:g}": band[0], f"{ceiling + 1:g}+": band[-1]}, "width": width}
        record = {"dataset": str(data_dir), "split": "test", "half": half, "rule": f"sha256(photo id)[0] {'even' if half == CALIBRATION else 'odd'}",
                  "excluded": len(exclude), "faces": counts, "method": "logistic p_minor on the estimate; Neyman band of the "
                  "estimates per true age 0..ceiling and older (split-conformal quantiles of the errors, neighbouring ages' errors "
                  "weighted by a Gaussian of `width` years), one share up to the ceiling and one for the older, and the width, "
                  f"chosen out of fold for {COVERAGE:g} coverage",
                  **({"second_opinion_weight": blended} if blended else {})}
        calibrations[name] = Calibrations(fitted["normal"], fitted["barred"], record)
    return calibrations, tables


def choose_band(estimates: np.ndarray, ages: np.ndarray, sexes: np.ndarray, ceiling: float,
                folds: int = 5) -> tuple[tuple[tuple[float, ...], float], dict]:
    """The bands (one share for the true ages up to the ceiling, one for the older) and the
    width whose intervals, each face judged by a calibration fit on the other folds, come
    nearest to COVERAGE, and their out-of-fold tables.

    First one share for both and the width, for the worst age group; then each share in turn,
    twice round, for the coverage of all the faces it serves: the older adults' range alone
    decides whether they are covered, and the faces up to the ceiling are judged together, so
    that the share follows no single small group's noise."""
    fold = np.random.default_rng(0).permutation(len(ages)) % folds
    ages = np.asarray(ages, float)
    p = np.zeros(len(ages))
    for k in range(folds):  # p_minor does not depend on the bands: fit once per fold
        p[fold == k] = fit(estimates[fold != k], ages[fold != k], ceiling).probability(estimates[fold == k])

    def out_of_fold(bands: tuple[float, ...], width: float) -> tuple[np.ndarray, np.ndarray]:
        low, high = np.zeros(len(ages)), np.zeros(len(ages))
        for k in range(folds):
            part = fold == k
            ranges = _ranges(estimates[~part], ages[~part], ceiling, bands, width)
            low[part], high[part] = Calibration(0.0, 0.0, *ranges).interval(estimates[part])
        return low, high

    group, older = groups.group_index(ages), ages > ceiling

    def off(bands: tuple[float, ...], width: float, faces: np.ndarray | None = None) -> float:
        """How far from COVERAGE: the worst age group's share, or that of the faces given."""
        hits = is_covered(*out_of_fold(bands, width), ages, ceiling)
        if faces is not None:
            return abs(np.mean(hits[faces]) - COVERAGE)
        return max(abs(np.mean(hits[group == g]) - COVERAGE) for g in np.unique(group))

    def bands_of(below: float, above: float) -> tuple[float, ...]:
        return (below,) * (int(ceiling) + 1) + (above,)

    _, share, width = min((off(bands_of(b, b), w), b, w) for w in WIDTHS for b in BANDS)
    shares = {False: share, True: share}  # keyed by "older than the ceiling"
    for _ in range(2):
        for side in (False, True):
            def trial(b: float) -> tuple[float, ...]:
                return bands_of(shares[False], b) if side else bands_of(b, shares[True])
            shares[side] = min(BANDS, key=lambda b: (off(trial(b), width, older == side), b))
    bands = bands_of(shares[False], shares[True])
    return (bands, width), judge(p, *out_of_fold(bands, width), ages, sexes, ceiling)


def check(estimator: AgeEstimator, data_dir: Path, exclude: Iterable[str] = (), part: str = "main") -> dict[str, dict]:
    """One part's calibration (`parts`) judged on the half it was not fit on (normally the check
    half), at the ages that part reports: per variant, the reliability table (predicted p_minor
    against the observed share of minors, per decile of faces) and the interval's coverage per
    true age group, overall and per sex."""
    reader = parts(estimator)[part]
    calibrations = reader.calibration
    if calibrations is None:
        raise ValueError("this model has no calibration: run `minorage calibrate` first")
    other = CALIBRATION if calibrations.fitted_on.get("half") == CHECK else CHECK
    exclude, people, ceiling = list(exclude), photo_demographics(data_dir), float(reader.age_range[1])
    results = {}
    for variant, kind in VARIANT_KIND.items():
        faces, opinions = _faces(estimator, data_dir, variant, other, exclude)
        estimates = _reported(estimator, reader, faces, opinions, variant)
        calibration = calibrations.of(kind == "barred")
        results[variant] = judge(calibration.probability(estimates), *calibration.interval(estimates),
                                 faces.ages, _sexes(people, faces.ids), ceiling)
    return results


def check_if_calibrated_on(estimator: AgeEstimator, data_dir: Path, exclude: Iterable[str] = ()) -> dict[str, dict] | None:
    """`check`, for a model calibrated on this data set (else None: its check half is not known).
    Of a model with an edge part, that part's: the stored faces' frames leave their photos."""
    part = "edge" if estimator.edge is not None else "main"
    calibration = parts(estimator)[part].calibration
    fitted_on = calibration.fitted_on.get("dataset") if calibration else None
    if fitted_on is None or Path(fitted_on).resolve() != Path(data_dir).resolve():
        return None
    return check(estimator, data_dir, exclude, part)


def _sexes(people: dict, ids: np.ndarray) -> np.ndarray:
    return np.array([people.get(i, (UNKNOWN, UNKNOWN))[0] for i in ids.tolist()])


def judge(p: np.ndarray, low: np.ndarray, high: np.ndarray, ages: np.ndarray, sexes: np.ndarray, ceiling: float) -> dict:
    """The reliability table and the interval's coverage of one set of faces."""
    covered = is_covered(low, high, ages, ceiling)
    return {
        "n": len(ages),
        "reliability": reliability(p, ages < groups.MINOR_LIMIT),
        "coverage": coverage_by_group(ages, covered),
        "coverage_by_sex": {s: coverage_by_group(ages[sexes == s], covered[sexes == s]) for s in sorted(set(sexes))},
    }


def is_covered(low: np.ndarray, high: np.ndarray, ages: np.ndarray, ceiling: float) -> np.ndarray:
    """Whether each face's true age (past the ceiling: "older") lies in its interval."""
    truth = true_ages(ages, ceiling)
    return (truth >= low - 1e-6) & (truth <= high + 1e-6)


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
        if result["reliability"]:
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


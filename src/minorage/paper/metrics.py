"""The paper's measures (§4): age groups, MAE, group accuracy, Impv; and the minor decision."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from minorage.groups import (
    ALL_GROUPS,
    CHILD_LIMIT,
    GROUP_NAMES,
    MINOR_BELOW,
    MINOR_LIMIT,
    YOUNG_ADULT_MAX,
    group_index,
)

Below = float | np.ndarray  # the flag's threshold: one for all faces, or each face's own (a model that routes faces)


def picked(below: Below, index: np.ndarray) -> Below:
    """The thresholds of the faces `index` picks (one threshold for all stays as it is)."""
    return below if np.ndim(below) == 0 else np.asarray(below)[index]


# ---------------------------------------------------------------------------------------------
# Measures over a test set

def mae(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute error in years (the paper's Eq. 1)."""
    return float(np.mean(np.abs(np.asarray(true, float) - np.asarray(pred, float))))


def age_averaged_mae(true: np.ndarray, pred: np.ndarray) -> float:
    """The MAE of each whole age, averaged over ages: what a test set with the same number of
    faces per age would give, so a model cannot win by being good at the commonest ages."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    years = np.rint(true).astype(int)
    return float(np.mean([np.mean(np.abs(true[years == a] - pred[years == a])) for a in np.unique(years)]))


def confusion(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Counts (6, 6): rows the true group, columns the predicted one, over ALL_GROUPS."""
    matrix = np.zeros((len(ALL_GROUPS), len(ALL_GROUPS)), int)
    np.add.at(matrix, (group_index(true), group_index(pred)), 1)
    return matrix


def group_accuracy(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Per paper group, the share of its faces predicted in it; `Acc` is their mean over the
    groups present (the paper's Acc)."""
    matrix = confusion(true, pred)
    out = {}
    for g, name in enumerate(GROUP_NAMES):
        total = matrix[g].sum()
        if total:
            out[name] = float(matrix[g, g] / total)
    out["Acc"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


def impv(a: float, b: float) -> float:
    """The paper's Eq. 2: (A - B) / A x 100, B against baseline A. Positive is better for MAE,
    negative is better for Acc."""
    return (a - b) / a * 100


def minor_decision(true: np.ndarray, pred: np.ndarray, below: Below = MINOR_BELOW) -> dict[str, float]:
    """The forensic question, under 18 or not (flagged when the estimate is below `below`):
    recall on minors, specificity on 18-25 year olds and on people aged 26+ (where present)."""
    true, pred = np.rint(np.asarray(true, float)), np.asarray(pred, float)
    minor_pred = pred < below
    out = {}
    for name, mask, want_minor in (
        ("minor_recall", true < MINOR_LIMIT, True),
        ("specificity_18_25", (true >= MINOR_LIMIT) & (true <= YOUNG_ADULT_MAX), False),
        ("specificity_26plus", true > YOUNG_ADULT_MAX, False),
    ):
        if mask.any():
            out[name] = float(np.mean(minor_pred[mask] == want_minor))
    if "specificity_26plus" in out:
        out["adults_called_minors"] = 1 - out["specificity_26plus"]
    return out


def _mean_by_age(true: np.ndarray, values: np.ndarray, oldest: int) -> dict[int, float]:
    """The mean of `values` over the faces of each whole true age present, up to `oldest`."""
    true = np.rint(np.asarray(true, float)).astype(int)
    return {int(age): float(np.mean(values[true == age])) for age in np.unique(true[true <= oldest])}


def flagged_by_age(true: np.ndarray, pred: np.ndarray, below: Below = MINOR_BELOW) -> dict[int, float]:
    """For each whole age under 18 present, the share of its faces flagged as minors: which
    minors a threshold misses (at 17.5 nearly no child, many 17-year-olds)."""
    return _mean_by_age(true, np.asarray(pred, float) < below, MINOR_LIMIT - 1)


SPECIFICITY_FLOOR = 0.85  # the share of 18-25 year olds that must stay unflagged 


def estimate_by_age(true: np.ndarray, pred: np.ndarray) -> dict[int, float]:
    """For each whole age 0-25 present, the mean estimate of its faces: the model's bias age by
    age, which an MAE hides (a 17-year-old read as 19 on average is flagged far less often than
    one read as 17), and where the labels themselves are suspect (an age read older than the next)."""
    return _mean_by_age(true, np.asarray(pred, float), YOUNG_ADULT_MAX)


def recall_at_specificity(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The best the model can do on the forensic question whatever its threshold: the highest
    minors' recall among thresholds (0.1-year steps) that keep at least SPECIFICITY_FLOOR of the
    18-25 year olds unflagged, and that threshold; and at it the recall on the under-16s alone,
    because a 17-year-old read as 18 is a near miss where a 12-year-old read as 18 is not."""
    true, pred = np.rint(np.asarray(true, float)), np.asarray(pred, float)
    minors, young_adults = pred[true < MINOR_LIMIT], pred[(true >= MINOR_LIMIT) & (true <= YOUNG_ADULT_MAX)]
    if not len(minors) or not len(young_adults):
        return {}
    thresholds = np.round(np.arange(0, YOUNG_ADULT_MAX + 0.05, 0.1), 1)
    specificity = np.mean(young_adults[None, :] >= thresholds[:, None], axis=1)
    # specificity only falls and recall only rises with the threshold: the highest that keeps the floor
    kept = np.flatnonzero(specificity >= SPECIFICITY_FLOOR)
    if not len(kept):
        return {}
    below = thresholds[kept[-1]]
    out = {"recall_at_spec85": float(np.mean(minors < below)), "threshold_at_spec85": float(below)}
    children = pred[true < CHILD_LIMIT]
    if len(children):
        out["recall_at_spec85_under16"] = float(np.mean(children < below))
    return out


def calibrate_minor_threshold(true: np.ndarray, pred: np.ndarray, recall: float) -> float:
    """The lowest flag threshold (from 17.5 up, in steps of 0.1 year) whose recall on the
    minors among these (validation) faces reaches `recall`."""
    true, pred = np.rint(np.asarray(true, float)), np.asarray(pred, float)
    minors = pred[true < MINOR_LIMIT]
    for step in range(int(round((YOUNG_ADULT_MAX - MINOR_BELOW) * 10)) + 1):
        below = round(MINOR_BELOW + step / 10, 1)
        if np.mean(minors < below) >= recall:
            return below
    return float(YOUNG_ADULT_MAX)


def evaluate(true: np.ndarray, pred: np.ndarray, below: Below = MINOR_BELOW) -> dict:
    """Every measure at once: the paper's on ages 0-25, the forensic ones on all faces."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    young = true <= YOUNG_ADULT_MAX
    return {
        "n": int(len(true)),
        "MAE": mae(true[young], pred[young]) if young.any() else float("nan"),
        "MAE_age_averaged": age_averaged_mae(true[young], pred[young]) if young.any() else float("nan"),
        **group_accuracy(true[young], pred[young]),
        **minor_decision(true, pred, below),
        **recall_at_specificity(true, pred),
        **({"minor_below": float(below)} if np.ndim(below) == 0 else {}),
        "flagged_by_age": flagged_by_age(true, pred, below),
        "estimate_by_age": estimate_by_age(true, pred),
        "confusion": confusion(true, pred).tolist(),
    }


INTERVAL_MEASURES = ("MAE", "MAE_age_averaged", "Acc", "minor_recall", "adults_called_minors", "recall_at_spec85",
                     "recall_at_spec85_under16")


def bootstrap_intervals(true: np.ndarray, pred: np.ndarray, below: Below = MINOR_BELOW, resamples: int = 1000,
                        level: float = 0.95, seed: int = 0, measure: Callable[..., dict] = evaluate,
                        names: tuple[str, ...] = INTERVAL_MEASURES) -> dict[str, list[float]]:
    """Percentile intervals of the headline measures (`names` of `measure`) over `resamples` test
    sets drawn from these faces with replacement. Why: a test split holds only 10-50 faces of some
    ages, so a few hundredths of age-averaged MAE between two models, or between a model and a
    target, can be chance; the interval says how far a measure would move on another draw of the
    same photos."""
    if resamples < 1:
        raise ValueError(f"the number of bootstrap resamples must be 1 or more, got {resamples}")
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(resamples):
        pick = rng.integers(0, len(true), len(true))
        measured = measure(true[pick], pred[pick], picked(below, pick))
        for name, values in draws.items():
            if name in measured and np.isfinite(measured[name]):
                values.append(measured[name])
    tail = (1 - level) / 2 * 100
    return {name: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] for name, v in draws.items() if v}


# ---------------------------------------------------------------------------------------------
# Fairness: the headline measures for each group of people

DECISION_MEASURES = ("minor_recall", "specificity_18_25", "adults_called_minors")
AGE_MIX_MEASURES = ("minor_recall_age_mix", "minor_bias_age_mix")
FAIRNESS_MEASURES = ("MAE_age_averaged", *DECISION_MEASURES, "minor_bias", *AGE_MIX_MEASURES)


def minors_age_mix(true: np.ndarray) -> np.ndarray:
    """The share of the minors at each whole year 0-17: the mix of ages groups are compared at."""
    years = np.rint(np.asarray(true, float)).astype(int)
    minors = years[(years >= 0) & (years < MINOR_LIMIT)]
    return np.bincount(minors, minlength=MINOR_LIMIT) / max(len(minors), 1)


def at_age_mix(by_year: dict[int, float], mix: np.ndarray) -> float:
    """A measure taken year by year, averaged with each year weighted as in `mix` (over the years
    present). Why: a group whose children are mostly babies is flagged more and read closer than
    one whose children are teenagers, whatever the model does; at one mix of ages the groups
    differ only by how the model reads them."""
    weights = np.array([mix[year] for year in by_year])
    return float(np.dot(weights, list(by_year.values())) / weights.sum()) if weights.sum() else float("nan")


def fairness_measures(true: np.ndarray, pred: np.ndarray, below: Below = MINOR_BELOW,
                      mix: np.ndarray | None = None) -> dict[str, float]:
    """What must hold for every group of people: the age-averaged MAE on ages 0-25, the minors
    flagged, the 18-25 year olds left unflagged and the people aged 26+ called minors, with how
    many faces each measure rests on; and how much older than they are the group's minors are
    read (`minor_bias`, mean estimate less age), which says why a group's children are flagged
    less where its recall is low. Given `mix` (`minors_age_mix` of all the groups' faces), the
    minors flagged and read older are also taken at that mix of ages (`at_age_mix`)."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    years = np.rint(true)
    young = true <= YOUNG_ADULT_MAX
    out = {"n": int(len(true)), "n_minors": int(np.sum(years < MINOR_LIMIT)),
           "n_18_25": int(np.sum((years >= MINOR_LIMIT) & young)), "n_26plus": int(np.sum(~young))}
    if young.any():
        out["MAE_age_averaged"] = age_averaged_mae(true[young], pred[young])
    decision = minor_decision(true, pred, below)
    out.update({k: decision[k] for k in DECISION_MEASURES if k in decision})
    minors = years < MINOR_LIMIT
    read = minors & np.isfinite(pred)
    if read.any():
        out["minor_bias"] = float(np.mean(pred[read] - true[read]))
    if mix is not None and minors.any():
        out["minor_recall_age_mix"] = at_age_mix(flagged_by_age(true, pred, below), mix)
        if read.any():
            out["minor_bias_age_mix"] = at_age_mix(_mean_by_age(true[read], pred[read] - true[read], MINOR_LIMIT - 1), mix)
    return out


def by_group(true: np.ndarray, pred: np.ndarray, groups: np.ndarray, below: Below = MINOR_BELOW,
             resamples: int = 0, seed: int = 0) -> dict[str, dict]:
    """`fairness_measures` for each group of faces (a sex, an ethnicity), the minors also at the
    mix of ages of all the faces given, with bootstrap intervals drawn within the group when
    `resamples` is given: a tool police use must not fail one group of people, and a small
    group's measure must show how uncertain it is."""
    true, pred, groups = np.asarray(true, float), np.asarray(pred, float), np.asarray(groups)
    measure = partial(fairness_measures, mix=minors_age_mix(true))
    out = {}
    for name in sorted(set(groups.tolist())):
        mask = groups == name
        out[name] = measure(true[mask], pred[mask], picked(below, mask))
        if resamples:
            out[name]["intervals"] = bootstrap_intervals(true[mask], pred[mask], picked(below, mask), resamples, seed=seed,
                                                         measure=measure, names=FAIRNESS_MEASURES)
    return out

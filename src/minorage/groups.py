"""The age groups minorage reports and the "probably a minor" flag, for every stage.

The groups are the paper's (Anda et al., 2019), with one more above them for adults.
"""

from __future__ import annotations

import numpy as np

#: Ages are grouped as in the paper (Anda et al., 2019): [0-5] [6-10] [11-15] [16-17] [18-25].
AGE_GROUPS: tuple[tuple[str, int, int], ...] = (
    ("0-5", 0, 5),
    ("6-10", 6, 10),
    ("11-15", 11, 15),
    ("16-17", 16, 17),
    ("18-25", 18, 25),
)
ADULT_GROUP = "26+"
MINOR_LIMIT = 18  # a true age below this is a minor
CHILD_LIMIT = 16  # a true age below this is below the [16-17] group, the minors nearest adulthood
MINOR_BELOW = 17.5  # an estimate below this is flagged "probably a minor" (rounds to 17 or less),
# unless the model's card sets its own threshold, calibrated on validation faces
YOUNG_ADULT_MAX = AGE_GROUPS[-1][2]  # 25: the oldest age the paper's groups and the models' range cover
GROUP_NAMES = tuple(name for name, _, _ in AGE_GROUPS)
ALL_GROUPS = (*GROUP_NAMES, ADULT_GROUP)


def age_group(age: float) -> str:
    """The paper's group of an age, rounded to whole years; "26+" beyond [18-25]."""
    years = max(0, int(round(age)))
    for name, low, high in AGE_GROUPS:
        if low <= years <= high:
            return name
    return ADULT_GROUP


def is_minor(age: float, below: float = MINOR_BELOW) -> bool:
    """The "probably a minor" flag: the estimate is below the threshold (by default, under 18
    once rounded, the same rounding as the groups)."""
    return bool(age < below)


def group_index(ages: np.ndarray) -> np.ndarray:
    """Index into ALL_GROUPS of each age, rounded to whole years (5 = 26+)."""
    years = np.maximum(0, np.rint(np.asarray(ages, float))).astype(int)
    edges = np.array([high for _, _, high in AGE_GROUPS])
    return np.searchsorted(edges, years, side="left")


def shown_age(age: float, group: str) -> str:
    """An age as a person reads it: "25+" for an estimate at the top of a model that reports
    [0, 25] ("25 or older", grouped with the adults), else to a tenth of a year."""
    return f"{YOUNG_ADULT_MAX}+" if group == ADULT_GROUP and age <= YOUNG_ADULT_MAX else f"{age:.1f}"


def shown_interval(low: float | None, high: float | None) -> str:
    """A 90 % age interval as a person reads it: "14-19", "19-25", or "19+" where its top is
    past the young adults (26, "26 or older"); empty for a model without one."""
    if low is None or high is None:
        return ""
    return f"{low:.0f}+" if high > YOUNG_ADULT_MAX else f"{low:.0f}-{high:.0f}"


def flag_rule(minor_below: float, minor_above: float | None) -> str:
    """The "probably a minor" flag's rule in words, for reports and exports."""
    return f"p_minor above {minor_above:g}" if minor_above is not None else f"estimate below {minor_below:g} years"


def shown_probability(p: float | None) -> str:
    """p_minor as a person reads it ("0.93"; "<0.01" and ">0.99" at the ends); empty without one."""
    if p is None:
        return ""
    return "<0.01" if p < 0.005 else ">0.99" if p > 0.995 else f"{p:.2f}"

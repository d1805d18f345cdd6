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

"""The paper's measures (§4): age groups, MAE, group accuracy, Impv; and the minor decision."""

from __future__ import annotations

from .config import ADULT_GROUP, AGE_GROUPS, MINOR_LIMIT


def age_group(age: float) -> str:
    """The paper's group of an age, rounded to whole years; "26+" beyond [18-25]."""
    years = max(0, int(round(age)))
    for name, low, high in AGE_GROUPS:
        if low <= years <= high:
            return name
    return ADULT_GROUP


def is_minor(age: float) -> bool:
    """Under 18 once rounded to whole years, the same rounding as the groups."""
    return int(round(age)) < MINOR_LIMIT

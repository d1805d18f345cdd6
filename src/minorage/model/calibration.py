"""The calibrated reading of an age estimate: the probability that the face is under 18
(`p_minor`) and a 90 % interval for its age.

Both are fit on faces the model never saw (`minorage calibrate`, `minorage.paper.calibration`)
and kept in the model card, one for normal faces and one for eye-barred faces, since the model
errs differently on each. Reading them needs only numpy:
- `p_minor` is a logistic curve of the estimate;
- the interval holds every true age whose own central range of estimates contains this
  estimate (a Neyman band): a face of any true age is covered about nine times in ten, the
  children as much as the adults who outnumber them. The last true age is one past the model's
  ceiling and means "that age or older" (26, "26 or older"): a 25-year-old has a range of its
  own, apart from the crowd of older adults whose estimates pile up at the ceiling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """One kind of face's calibration (normal or eye-barred)."""

    intercept: float  # p_minor = 1 / (1 + exp(-(intercept + slope * estimate)))
    slope: float
    estimate_low: tuple[float, ...]  # per true age 0..ceiling + 1 (the last: that age or older),
    estimate_high: tuple[float, ...]  # the range that holds the central share `band` of its estimates
    band: tuple[float, ...] = ()  # per true age, the share of its estimates its range holds, chosen
    # so that the intervals, a union of such ranges, cover 90 % of the faces of every age group
    width: float = 0.0  # years over which an age's range borrowed its neighbours' errors (0: its own faces only)

    def probability(self, ages: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.intercept + self.slope * np.asarray(ages, float))))

    def interval(self, ages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) true ages for each estimate; high at the last age means "or older"."""
        ages = np.asarray(ages, float)[:, None]
        low, high = np.asarray(self.estimate_low)[None], np.asarray(self.estimate_high)[None]
        inside = (ages >= low) & (ages <= high)
        nearest = np.argmin(np.maximum(low - ages, ages - high), axis=1)  # when no true age fits
        found = inside.any(axis=1)
        first = np.where(found, inside.argmax(axis=1), nearest)
        last = np.where(found, inside.shape[1] - 1 - inside[:, ::-1].argmax(axis=1), nearest)
        return first.astype(float), last.astype(float)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        return cls(**{k: tuple(map(float, v)) if isinstance(v, list) else float(v) for k, v in data.items()})


@dataclass(frozen=True)
class Calibrations:
    """A model's calibrations: normal and eye-barred faces, and what they were fit on."""

    normal: Calibration
    barred: Calibration
    fitted_on: dict

    def of(self, eyes_barred: bool) -> Calibration:
        return self.barred if eyes_barred else self.normal

    def to_dict(self) -> dict:
        return {"normal": self.normal.to_dict(), "barred": self.barred.to_dict(), "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, data: dict | None) -> "Calibrations | None":
        if not data:
            return None
        return cls(Calibration.from_dict(data["normal"]), Calibration.from_dict(data["barred"]), data.get("fitted_on", {}))

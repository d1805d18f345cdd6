"""The one path from an image to its faces' ages, shared by `predict` and `scan`.

An image's faces are found and each framed as the model expects (`find_faces`); the faces of
several files are aged in one network pass and the ages handed back file by file
(`ages_by_item`); each age becomes the reported group and flag (`Reading.verdict`). `predict` runs the
whole path in one process; `scan` finds faces in its worker processes and ages them in the main
one, so that its batches stay large.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minorage.config import Framing
from minorage.faces.detection import Face, FaceDetector, main_face
from minorage.faces.framing import crop_box, frame_face
from minorage.groups import ADULT_GROUP, YOUNG_ADULT_MAX, age_group, is_minor, shown_age
from minorage.model.estimator import AgeEstimator


@dataclass
class FramedFace:
    """One face and the model's input cut for it; `face` is None for a crop taken whole."""

    face: Face | None
    crop: np.ndarray


def find_faces(image: np.ndarray, detector: FaceDetector, framing: Framing) -> list[FramedFace]:
    """Every face of a BGR image, best score first, each framed for the model."""
    return [FramedFace(face, frame_face(image, face.box, framing)) for face in detector.detect(image)]


def frame_crop(image: np.ndarray, detector: FaceDetector, framing: Framing, face_fraction: float) -> tuple[FramedFace, str]:
    """An image that is one face crop: its main face framed ("detected"), or, where no face is
    found, its central `face_fraction` taken as the face box ("whole_image"). Why: crops often
    carry a margin or background, and a face framed twice is not the face the model learnt."""
    face = main_face(detector.detect(image), image.shape)
    box = face.box if face else crop_box(image, face_fraction)
    return FramedFace(face, frame_face(image, box, framing)), "detected" if face else "whole_image"


def ages_by_item(crops: list[list[np.ndarray]], estimator: AgeEstimator) -> list[np.ndarray]:
    """The ages of several files' face crops from one network pass, split back per file."""
    flat = [crop for item in crops for crop in item]
    ages = estimator.predict(np.stack(flat)) if flat else np.zeros(0, np.float32)
    bounds = np.cumsum([0, *(len(item) for item in crops)])
    return [ages[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


@dataclass(frozen=True)
class Reading:
    """How an age estimate is read out: below `minor_below` it is flagged; at `ceiling`, the top of
    a model that reports [0, 25] with 25 meaning "25 or older", it is an adult ("26+"), never
    put in the 18-25 group it cannot tell from."""

    minor_below: float
    ceiling: float | None = None

    @classmethod
    def of(cls, estimator: AgeEstimator) -> "Reading":
        top = estimator.age_range[1]
        return cls(estimator.minor_below, float(top) if top <= YOUNG_ADULT_MAX else None)

    def shown(self, age: float) -> str:
        """The age as a person reads it: "25+" at the ceiling, else to a tenth of a year."""
        return shown_age(age, self.verdict(age)["group"])

    def verdict(self, age: float) -> dict:
        """What every output says of one face's age: its group and the "probably a minor" flag."""
        adult = self.ceiling is not None and age >= self.ceiling
        return {"group": ADULT_GROUP if adult else age_group(age), "minor": is_minor(age, self.minor_below)}

"""The one path from an image to its faces' ages, shared by `predict` and `scan`.

An image's faces are found and each framed as the model expects (`find_faces`); the faces of
several files are aged in one network pass and the ages handed back file by file
(`ages_by_item`); each age becomes the reported group and flag (`verdict`). `predict` runs the
whole path in one process; `scan` finds faces in its worker processes and ages them in the main
one, so that its batches stay large.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minorage.config import Framing
from minorage.faces.detection import Face, FaceDetector, main_face
from minorage.faces.framing import crop_box, frame_face
from minorage.groups import age_group, is_minor
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


def verdict(age: float, minor_below: float) -> dict:
    """What every output says of one face's age: its group and the "probably a minor" flag."""
    return {"group": age_group(age), "minor": is_minor(age, minor_below)}

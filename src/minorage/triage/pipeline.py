"""The one path from an image to its faces' ages, shared by `predict` and `scan`.

An image's faces are found and each framed as the model expects (`find_faces`); the faces of
several files are aged in one network pass and the ages handed back file by file
(`ages_by_item`); each age becomes the reported group and flag (`Reading.verdict`). A model with
an edge part reads the faces whose frame leaves the image with it, and reads them out by its own
flags and calibration (`FramedFace.edge_filled`). A model with a second opinion also gets each
detected face's chip aligned to dlib's template (`FramedFace.chip`), read apart
(`opinions_by_item`), its share blended into their ages (`AgeEstimator.blended`), and the
verdict applies its raise and veto. `predict` runs the whole path in one
process; `scan` finds faces in its worker processes and ages them in the main one, so that its
batches stay large.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minorage.config import Framings
from minorage.faces.detection import Face, FaceDetector, main_face
from minorage.faces.framing import crop_box, frame_routed, opinion_chip
from minorage.groups import ADULT_GROUP, YOUNG_ADULT_MAX, age_group, is_minor, shown_age
from minorage.model.calibration import Calibrations
from minorage.model.estimator import AgeEstimator, opinion_reads, opinion_setting


@dataclass
class FramedFace:
    """One face and the model's input cut for it; `face` is None for a crop taken whole."""

    face: Face | None
    crop: np.ndarray
    edge_filled: bool = False  # framed for the model's edge part (its frame leaves the image)
    chip: np.ndarray | None = None  # for a model's second opinion: the face on dlib's template (detected faces only)


def _framed(image: np.ndarray, face: Face | None, box: tuple[float, float, float, float], framings: Framings) -> FramedFace:
    crop, filled = frame_routed(image, box, framings, face.eyes if face else None)
    return FramedFace(face, crop, filled, opinion_chip(image, face.points if face else None, framings))


def find_faces(image: np.ndarray, detector: FaceDetector, framings: Framings) -> list[FramedFace]:
    """Every face of a BGR image, best score first, each framed for the model."""
    return [_framed(image, face, face.box, framings) for face in detector.detect(image)]


def frame_crop(image: np.ndarray, detector: FaceDetector, framings: Framings, face_fraction: float) -> tuple[FramedFace, str]:
    """An image that is one face crop: its main face framed ("detected"), or, where no face is
    found, its central `face_fraction` taken as the face box ("whole_image"). Why: crops often
    carry a margin or background, and a face framed twice is not the face the model learnt."""
    face = main_face(detector.detect(image), image.shape)
    box = face.box if face else crop_box(image, face_fraction)
    return _framed(image, face, box, framings), "detected" if face else "whole_image"


def ages_by_item(faces: list[list[FramedFace]], estimator: AgeEstimator) -> list[np.ndarray]:
    """The ages of several files' framed faces from one network pass, split back per file."""
    flat = [face for item in faces for face in item]
    ages = estimator.predict(np.stack([f.crop for f in flat]), edge_filled=np.array([f.edge_filled for f in flat])) \
        if flat else np.zeros(0, np.float32)
    return _split(ages, faces)


def opinions_by_item(faces: list[list[FramedFace]], estimator: AgeEstimator) -> list[np.ndarray]:
    """The second opinion's ages of several files' faces (NaN where it reads none: no second
    opinion, or a crop taken whole), from one network pass, split back per file."""
    flat = [face for item in faces for face in item]
    ages = np.full(len(flat), np.nan, np.float32)
    read = [i for i, f in enumerate(flat) if f.chip is not None]
    if estimator.opinion is not None and read:
        ages[read] = estimator.opinion.predict(np.stack([flat[i].chip for i in read]))
    return _split(ages, faces)


def _split(values: np.ndarray, faces: list[list[FramedFace]]) -> list[np.ndarray]:
    bounds = np.cumsum([0, *(len(item) for item in faces)])
    return [values[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


@dataclass(frozen=True)
class Reading:
    """How an age estimate is read out, the same in every output.

    - The flag: an estimate below `minor_below` years (`barred_below` for eye-barred faces where
      the model has a flag of its own for them), or, where `minor_above` is set, a
      calibrated probability of being under 18 above it (the operating point stated as a
      probability; it needs a calibrated model).
    - The group: at `ceiling`, the top of a model that reports [0, 25] with 25 meaning "25 or
      older", the face is an adult ("26+"), never put in the 18-25 group it cannot tell from.
    - With the model's `calibration`: `p_minor` and a 90 % interval for the age (`age_low`,
      `age_high`; a top past the ceiling means "or older"), each fit on normal or on eye-barred
      faces as the face is.
    - A face read by a model's edge part is read out by that part's own `edge` reading.
    - With a model's `second_opinion` (its card's) and that network's age for a face it reads
      (open eyes, or barred where it has a barred part): the age flag raised by its "raise", and
      on open eyes any flag lifted where it says "veto" or more.
      The age read out is the model's (`AgeEstimator.blended`: with its "weight" of the second
      network's age in it).
    """

    minor_below: float
    ceiling: float | None = None
    calibration: Calibrations | None = None
    minor_above: float | None = None
    barred_below: float | None = None
    edge: "Reading | None" = None
    second_opinion: dict | None = None

    def __post_init__(self):
        if self.minor_above is not None:
            if self.calibration is None:
                raise ValueError("--minor-above needs a model calibrated with `minorage calibrate`; this one has no p_minor: "
                                 "use --minor-below YEARS")
            if not 0 < self.minor_above < 1:
                raise ValueError(f"--minor-above is a probability between 0 and 1, got {self.minor_above}")

    @classmethod
    def of(cls, estimator: AgeEstimator, minor_above: float | None = None) -> "Reading":
        top = estimator.age_range[1]
        edge = cls.of(estimator.edge, minor_above) if estimator.edge else None
        return cls(estimator.minor_below, float(top) if top <= YOUNG_ADULT_MAX else None, estimator.calibration, minor_above,
                   estimator.flag(eyes_barred=True), edge, estimator.card.second_opinion if estimator.opinion else None)

    def shown(self, age: float, edge_filled: bool = False) -> str:
        """The age as a person reads it: "25+" at the ceiling, else to a tenth of a year."""
        return shown_age(age, self.verdict(age, edge_filled=edge_filled)["group"])

    def flag_below(self, eyes_barred: bool = False, edge_filled: bool = False) -> float:
        """The age threshold one face is flagged by (unless `minor_above` flags by p_minor): its
        part's, for its kind. Why outputs show it: a model with several flags flags 18.0 on one
        face and not on another, and an examiner must see why."""
        if edge_filled and self.edge is not None:
            return self.edge.flag_below(eyes_barred)
        return self.barred_below if eyes_barred and self.barred_below is not None else self.minor_below

    def verdict(self, age: float, eyes_barred: bool = False, edge_filled: bool = False, opinion: float = np.nan) -> dict:
        """What every output says of one face's age: its group, the "probably a minor" flag and,
        for a calibrated model, p_minor and the 90 % interval; with a second opinion, its age
        and whether it lifted the flag."""
        said = self._own_verdict(age, eyes_barred, edge_filled)
        if self.second_opinion is None:
            return said
        read = bool(opinion_reads(opinion, eyes_barred, self.second_opinion))
        if self.minor_above is None:  # flagged by age: the flag raised on the faces it reads
            raised = float(opinion_setting(self.second_opinion, eyes_barred, "raise")) if read else 0.0
            said["minor_below"] = self.flag_below(eyes_barred, edge_filled) + raised
            would = is_minor(age, said["minor_below"])
        else:  # flagged by p_minor: only the veto counts
            would = said["minor"]
        veto = self.second_opinion.get("veto")
        lifted = would and read and not eyes_barred and veto is not None and opinion >= veto
        said.update(minor=bool(would and not lifted), second_opinion_age=round(float(opinion), 1) if read else None,
                    flag_lifted=bool(lifted))
        return said

    def _own_verdict(self, age: float, eyes_barred: bool, edge_filled: bool) -> dict:
        if edge_filled and self.edge is not None:
            return self.edge.verdict(age, eyes_barred)
        adult = self.ceiling is not None and age >= self.ceiling
        said = {"group": ADULT_GROUP if adult else age_group(age), "minor": is_minor(age, self.flag_below(eyes_barred))}
        if self.calibration is not None:
            fit = self.calibration.of(eyes_barred)
            low, high = fit.interval(np.array([age]))
            said.update(p_minor=round(float(fit.probability(np.array([age]))[0]), 4), age_low=float(low[0]), age_high=float(high[0]))
            if self.minor_above is not None:
                said["minor"] = said["p_minor"] > self.minor_above
        return said

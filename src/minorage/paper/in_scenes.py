"""A model judged the way users run it: the test split's photos pasted into whole scenes, the
faces found by the detector `predict` uses, framed from its boxes, then aged.

Why: `evaluation` reads the data set's stored faces, cut from the boxes MTCNN found when the
data set was built, so it never sees a face the detector misses, boxes differently or finds in
a degraded photo. Here each test photo (and its eye-barred copy, barred from the same stored
eye points) is pasted whole (hair and neck kept around the face, only the rim blended) into a
face-free picture at a random size, place and angle, and given one of `wild.DEGRADATIONS` in
turn (`wild.wild_photo`); the detector's face that overlaps the pasted
one (IoU at least 0.3, as the detection benchmark counts it) is framed as `predict` frames it
(for a model with an edge part, a face whose frame leaves the scene is read by that part) and
flagged as `predict` flags it: a model with a flag of its own for eye-barred faces applies it to
the faces the eye-bar test calls barred, whichever copy they came from.

A face the detector misses gets no age: the age measures are over the faces found, and the
share found, with the minors' recall counting a missed child as not flagged, is reported beside
them, overall, per degradation, per sex and per ethnicity.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minorage.config import Framings, TrainConfig
from minorage.faces.detection import Face, FaceDetector, face_at
from minorage.faces.detector_training import FACE_FREE_EVAL, face_free_pictures
from minorage.faces.framing import frame_routed, opinion_chip
from minorage.faces.occlusion import eyes_occluded, occlude
from minorage.faces.wild import DEGRADATIONS, WildPhoto, wild_photo
from minorage.groups import MINOR_LIMIT, YOUNG_ADULT_MAX
from minorage.model.estimator import AgeEstimator, opinion_reads
from minorage.paper import metrics
from minorage.paper.evaluation import FAIRNESS_KEYS, photo_ids
from minorage.paper.readers import UNKNOWN
from minorage.paper.store import photo_demographics, source_image
from minorage.paper.training import validation_mask
from minorage.threads import in_order

MIN_IOU = 0.3  # a detection counts as the pasted face (a turned face's true box is its corners' bounds)


def photos_of_split(data_dir: Path, exclude: Iterable[str] = (), photos: int = 0, skip: int = 0, split: str = "test") -> list[dict]:
    """The test split's photos of a data set (one manifest row each, with the box and eyes the
    build found), without those `exclude` names, in order of id: past the first `skip`, the
    next `photos` when set. `split` "validation" takes instead the training photos that training
    sets aside to validate (`training.validation_mask`, the recipe's defaults): photos no
    judgement in scenes uses, for choosing."""
    if split not in ("test", "validation"):
        raise ValueError(f"the photos in scenes are the test split's or the validation part's, not {split!r}")
    left_out, _ = photo_ids(data_dir, exclude)
    rows = [r for r in csv.DictReader((Path(data_dir) / "manifest.csv").open())
            if r["split"] == ("test" if split == "test" else "train") and r["variant"] == "org"]
    if split == "validation":  # chosen among every training photo, as a recipe that trains on them all does
        held = validation_mask(np.array([r["id"] for r in rows]), TrainConfig.val_fraction, TrainConfig.val_seed)
        rows = [r for r, kept in zip(rows, held) if kept]
    rows = sorted((r for r in rows if r["id"] not in left_out), key=lambda r: r["id"])
    return rows[skip : skip + photos] if photos else rows[skip:]


def stored_face(row: dict) -> Face:
    """The face box and eye points the data set's build found on the photo."""
    eyes = np.array(json.loads(row["eyes"]), float)
    return Face(tuple(json.loads(row["box"])), 1.0, eyes)


def scene_of(row: dict, barred: bool, background: np.ndarray, degradation: str, rng: np.random.Generator) -> WildPhoto:
    """One test photo (eye-barred if asked, as the data set's barred faces are) in a scene."""
    image, face = source_image(row), stored_face(row)
    if barred:
        image, _ = occlude(image, face)
    return wild_photo(image, face, background, degradation, rng, whole=True)


def face_in(scene: WildPhoto, detector: FaceDetector) -> Face | None:
    """The detected face that is the pasted one, or None where the detector missed it."""
    return face_at(scene.image, scene.box, detector, MIN_IOU)


#: a face's model input, whether it goes to the edge part, and its chip for the model's second
#: opinion where it has one (`framing.template_chip`); None where the detector missed the face
Framed = tuple[np.ndarray, bool, np.ndarray | None] | None


def scene_faces(rows: list[dict], barred: bool, detector: FaceDetector, seed: int = 0,
                progress: bool = True, threads: int = 0) -> Iterator[tuple[WildPhoto, Face | None, str]]:
    """Each photo in its scene (the same scenes for a seed, barred or not), the face the detector
    found there (None where it missed it) and the scene's look. The scenes are made in order, the
    faces looked for `threads` scenes at a time (`minorage.threads`; 0: one per CPU core)."""
    backgrounds = face_free_pictures(FACE_FREE_EVAL)
    rng = np.random.default_rng(seed)

    def scenes() -> Iterator[tuple[WildPhoto, str]]:
        for k, row in enumerate(tqdm(rows, desc=f"scenes ({'barred' if barred else 'normal'})", unit="photo", disable=not progress, leave=False)):
            kind = DEGRADATIONS[k % len(DEGRADATIONS)]
            yield scene_of(row, barred, backgrounds[k % len(backgrounds)], kind, rng), kind

    def looked(made: tuple[WildPhoto, str]) -> tuple[WildPhoto, Face | None, str]:
        return made[0], face_in(made[0], detector), made[1]

    return in_order(looked, scenes(), threads)


def scene_crops(rows: list[dict], barred: bool, detector: FaceDetector, framings: list[Framings],
                seed: int = 0, progress: bool = True) -> tuple[list[list[Framed]], list[str], np.ndarray]:
    """The face found in each scene (`scene_faces`) framed once per model's framings
    (`AgeEstimator.framings`), each scene's look, and whether the eye-bar test calls the face
    found barred (False where none was found)."""
    crops: list[list[Framed]] = [[] for _ in framings]
    kinds, seen_barred = [], []
    for scene, face, kind in scene_faces(rows, barred, detector, seed, progress):
        kinds.append(kind)
        seen_barred.append(face is not None and eyes_occluded(scene.image, face))
        for pair, framed in zip(framings, crops):
            framed.append(None if face is None else (*frame_routed(scene.image, face.box, pair, face.eyes),
                                                      opinion_chip(scene.image, face.points, pair)))
    return crops, kinds, np.array(seen_barred, bool)


def evaluate_in_scenes(estimator: AgeEstimator, detector: FaceDetector, data_dir: Path, variants: tuple[str, ...] = ("org", "ocl"),
                       exclude: Iterable[str] = (), photos: int = 0, resamples: int = 0, seed: int = 0,
                       progress: bool = True, skip: int = 0) -> dict[str, dict]:
    """Per variant: `metrics.evaluate` over the faces found (per sex and ethnicity too), and
    under "scenes" the share found and the minors' recall with misses counted as unflagged."""
    rows = photos_of_split(data_dir, exclude, photos, skip)
    known = photo_demographics(data_dir)
    people = [known.get(r["id"], (UNKNOWN, UNKNOWN)) for r in rows]
    ages = np.array([float(r["age"]) for r in rows])
    results = {}
    for variant in variants:
        (crops,), kinds, seen_barred = scene_crops(rows, variant == "ocl", detector, [estimator.framings], seed, progress)
        results[variant] = _measures(estimator, variant == "ocl", seen_barred, ages, crops, np.array(kinds), people, resamples)
    return results


def estimates(estimator: AgeEstimator, crops: list[Framed]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The age of each framed face, infinite where the detector missed it (never flagged),
    whether the model's edge part read it, and its second opinion's age (NaN where none)."""
    found = [c for c in crops if c is not None]
    mask = np.array([c is not None for c in crops], bool)
    pred, filled, opinions = np.full(len(crops), np.inf), np.zeros(len(crops), bool), np.full(len(crops), np.nan)
    if found:
        filled[mask] = [f for _, f, _ in found]
        pred[mask] = estimator.predict(np.stack([c for c, _, _ in found]), edge_filled=filled[mask])
        read = [i for i, (_, _, chip) in zip(np.flatnonzero(mask), found) if chip is not None]
        if estimator.opinion is not None and read:
            opinions[read] = estimator.opinion.predict(np.stack([crops[i][2] for i in read]))
    return pred, filled, opinions


def flag_like(estimator: AgeEstimator, reference: AgeEstimator, detector: FaceDetector, data_dir: Path, exclude: Iterable[str] = (),
              photos: int = 0, skip: int = 0, seed: int = 0, progress: bool = True) -> dict:
    """The lowest flag (from 17.5 up, in tenths of a year) at which `estimator` flags at least
    as many minors in scenes as `reference` does at its own flag, normal and barred faces
    pooled, a missed face unflagged; both read the same scenes and the same faces found.

    Why: a model that reads faces in photos better can move its estimates as a whole; its flag
    is then chosen on scenes of photos no judgement uses (`skip` the ones that judge). The
    reference flags each face as `predict` would (its part's flag for the kind the eye-bar test
    says); the flag chosen is one for every face of `estimator`."""
    rows = photos_of_split(data_dir, exclude, photos, skip)
    ages = np.array([float(r["age"]) for r in rows])
    minors = np.rint(ages) < MINOR_LIMIT
    mine, theirs = [], []
    for barred in (False, True):
        (own, ref), _, seen_barred = scene_crops(rows, barred, detector, [estimator.framings, reference.framings], seed, progress)
        mine.append(estimates(estimator, own)[0][minors])
        pred, filled, opinions = estimates(reference, ref)
        theirs.append((reference.blended(pred, seen_barred, opinions) < reference.flags(filled, seen_barred, opinions))[minors])
    mine_all, wanted = np.concatenate(mine), float(np.mean(np.concatenate(theirs)))
    below = metrics.calibrate_minor_threshold(np.tile(ages[minors], 2), mine_all, wanted)
    return {"photos": len(rows), "minors": int(minors.sum()), "reference_flagged": wanted, "minor_below": below,
            "flagged": float(np.mean(mine_all < below)),
            "by_kind": {kind: {"reference": float(np.mean(t)), "model": float(np.mean(m < below))}
                        for kind, m, t in zip(("normal", "barred"), mine, theirs)}}


def _measures(estimator: AgeEstimator, barred: bool, seen_barred: np.ndarray, true: np.ndarray, crops: list[Framed],
              kinds: np.ndarray, people: list[tuple[str, str]], resamples: int) -> dict:
    """The age measures over the faces found, and what was found, overall and by group; each
    face flagged at its part's flag for the kind the eye-bar test says it is (with the model's
    second opinion where it has one)."""
    found = np.array([c is not None for c in crops])
    pred, filled, opinions = estimates(estimator, crops)
    pred, below = estimator.blended(pred, seen_barred, opinions), estimator.flags(filled, seen_barred, opinions)
    if below.size and np.all(below == below.flat[0]):
        below = float(below.flat[0])  # one flag for every face: recorded as the model's flag
    seen = metrics.picked(below, found)
    out = metrics.evaluate(true[found], pred[found], seen)
    out["taken_as_barred"] = float(seen_barred[found].mean()) if found.any() else 0.0
    if np.ndim(below):  # flags per face: the main part's for this copy's kind, and the edge part's
        out["minor_below"] = estimator.flag(barred)
    if estimator.edge is not None:
        out.update(routed_to_edge=float(filled[found].mean()) if found.any() else 0.0, edge_minor_below=estimator.edge.flag(barred))
    if estimator.opinion is not None and found.any():  # of the faces found: read by it, and flags it lifted
        out["second_opinion"] = {"read": float(opinion_reads(opinions, seen_barred, estimator.card.second_opinion)[found].mean()),
                                 "flags_lifted": float(estimator.lifted(pred, filled, seen_barred, opinions)[found].mean())}
    if resamples:
        out["intervals"] = metrics.bootstrap_intervals(true[found], pred[found], seen, resamples)
    labels = {key: np.array([p[i] for p in people]) for i, key in enumerate(FAIRNESS_KEYS)}
    for key, groups in labels.items():
        out[key] = metrics.by_group(true[found], pred[found], groups[found], seen, resamples)

    def within(mask: np.ndarray) -> dict:
        return _found(true[mask], pred[mask], found[mask], metrics.picked(below, mask))

    out["scenes"] = {"photos": int(len(true)), **_found(true, pred, found, below),
                     "by_degradation": {k: within(kinds == k) for k in DEGRADATIONS},
                     **{key: {g: within(groups == g) for g in sorted(set(groups.tolist()))} for key, groups in labels.items()}}
    return out


def _found(true: np.ndarray, pred: np.ndarray, found: np.ndarray, below: metrics.Below) -> dict:
    """Share of faces found; over every minor, the share flagged (a missed one is not); over the
    faces found, the MAE on ages 0-25 and the people aged 26+ called minors."""
    minors, young = np.rint(true) < MINOR_LIMIT, true <= YOUNG_ADULT_MAX
    flagged = pred < below
    out = {"photos": int(len(true)), "found": float(found.mean()) if len(true) else float("nan")}
    if minors.any():
        out["minors_flagged_with_misses"] = float(np.mean(flagged[minors]))
    if (found & young).any():
        out["MAE"] = metrics.mae(true[found & young], pred[found & young])
    if (found & ~young).any():
        out["adults_called_minors"] = float(np.mean(flagged[found & ~young]))
    return out

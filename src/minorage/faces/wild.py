"""Photos as seized collections hold them, made from held-out faces: each face pasted into a
face-free scene at a random size, position and angle, then degraded the way such photos are
(grayscale, sepia, low resolution, heavy JPEG, blur, noise, cut by the image's edge).

Why: `../shared` holds only UTKFace's aligned, centred, colour chips, on which every detector
looks perfect; a detector or an age model must be judged on faces that are not. The truth of
each face is stock MTCNN's box on its chip (as in `detector_training.face_pairs`), carried
through the same geometry as the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from minorage.faces.detection import Face, FaceDetector, iou

DEGRADATIONS = ("none", "grayscale", "sepia", "low_res", "jpeg", "blur", "noise", "edge")

LUMA_BGR = np.array([0.114, 0.587, 0.299], np.float32)  # a BGR pixel's brightness, as OpenCV's BGR2GRAY
SEPIA_BGR = np.array([[0.131, 0.534, 0.272], [0.168, 0.686, 0.349], [0.189, 0.769, 0.393]], np.float32)  # BGR in, BGR out


def sepia(image: np.ndarray) -> np.ndarray:
    """A BGR image (or a stack of them) toned brown as old prints are."""
    return np.clip(image.astype(np.float32) @ SEPIA_BGR.T, 0, 255).astype(np.uint8)


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """A BGR uint8 image through a JPEG encoder at this quality and back (unchanged if OpenCV
    cannot encode it): re-shared photos lose this much."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_COLOR) if ok else image


@dataclass(frozen=True)
class WildPhoto:
    """A scene with one pasted face: the image, the face's true box, what was done to it."""

    image: np.ndarray
    box: tuple[float, float, float, float]
    degradation: str
    angle: float
    face: Face | None = None  # the face as a detector's training truth: its box upright, of the
    # pasted size, at the pasted centre, its points carried through the same geometry


def _soft_mask(side: int, whole: bool = False) -> np.ndarray:
    """An ellipse over the chip with a blurred rim, so no square edge betrays the paste; with
    `whole`, the whole chip with only its outer rim blended (hair, neck and the rest of the head
    kept, as a photo has them around a face)."""
    mask = np.zeros((side, side), np.float32)
    if whole:
        rim = max(1, int(side * 0.06))
        mask[rim:-rim, rim:-rim] = 1.0
    else:
        cv2.ellipse(mask, (side // 2, side // 2), (int(side * 0.46), int(side * 0.49)), 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(mask, (0, 0), side * 0.04)[..., None]


def paste(scene: np.ndarray, chip: np.ndarray, truth: Face, face_px: float, angle: float, centre: tuple[float, float],
          whole: bool = False) -> tuple[np.ndarray, tuple[float, float, float, float], Face]:
    """The chip scaled so its face box is `face_px` wide, turned by `angle` degrees, its face
    centred at `centre`, blended into a copy of the scene (as an ellipse, or, with `whole`, the
    whole chip); the face's box there (the bounds of its turned corners, clipped to the scene)
    and the face as a detector would box it."""
    scale = face_px / truth.width
    fx, fy = (truth.box[0] + truth.box[2]) / 2, (truth.box[1] + truth.box[3]) / 2
    matrix = cv2.getRotationMatrix2D((fx, fy), angle, scale)
    matrix[:, 2] += np.array(centre) - np.array([fx, fy])
    h, w = scene.shape[:2]
    warped = cv2.warpAffine(chip, matrix, (w, h), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(_soft_mask(chip.shape[0], whole), matrix, (w, h))[..., None]
    out = (scene * (1 - alpha) + warped * alpha).astype(np.uint8)
    x1, y1, x2, y2 = truth.box
    corners = np.array([[x1, y1, 1], [x2, y1, 1], [x1, y2, 1], [x2, y2, 1]]) @ matrix.T
    (bx1, by1), (bx2, by2) = corners.min(axis=0), corners.max(axis=0)
    half = np.array([truth.width, truth.height]) * scale / 2
    upright = Face((centre[0] - half[0], centre[1] - half[1], centre[0] + half[0], centre[1] + half[1]), truth.score,
                   np.c_[truth.points, np.ones(len(truth.points))] @ matrix.T)
    return out, (max(0.0, bx1), max(0.0, by1), min(float(w), bx2), min(float(h), by2)), upright


def degrade(image: np.ndarray, degradation: str, rng: np.random.Generator) -> np.ndarray:
    """One of `DEGRADATIONS` (low resolution and the edge are done by `wild_photo`)."""
    if degradation == "grayscale":
        return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if degradation == "sepia":
        return sepia(image)
    if degradation == "jpeg":
        return jpeg_round_trip(image, int(rng.integers(10, 41)))
    if degradation == "blur":
        return cv2.GaussianBlur(image, (0, 0), float(rng.uniform(1.0, 2.5)))
    if degradation == "noise":
        return np.clip(image + rng.normal(0, rng.uniform(8, 20), image.shape), 0, 255).astype(np.uint8)
    return image


def wild_photo(chip: np.ndarray, truth: Face, background: np.ndarray, degradation: str, rng: np.random.Generator,
               size: tuple[int, int] = (640, 480), max_angle: float = 30.0, whole: bool = False) -> WildPhoto:
    """One scene of `size` (w, h) with the chip's face in it, degraded; `whole` pastes the whole
    chip rather than an ellipse around the face (see `paste`)."""
    w, h = size
    low_res = degradation == "low_res"
    shrink = int(rng.integers(2, 4)) if low_res else 1  # drawn small, then enlarged: faces of 24-64 px upscaled
    sw, sh = w // shrink, h // shrink
    face_px = float(rng.uniform(24, 64) if low_res else rng.uniform(48, min(sw, sh) * 0.5))
    angle = float(rng.uniform(-max_angle, max_angle))
    margin = face_px * 0.75
    if degradation == "edge":  # a quarter to a third of the face beyond the image's left or right edge
        cx = face_px * rng.uniform(0.17, 0.25) * (1 if rng.random() < 0.5 else -1)
        cx = cx if cx > 0 else sw + cx
        centre = (cx, float(rng.uniform(margin, sh - margin)))
    else:
        centre = (float(rng.uniform(margin, sw - margin)), float(rng.uniform(margin, sh - margin)))
    scene = cv2.resize(background, (sw, sh), interpolation=cv2.INTER_AREA)
    image, box, face = paste(scene, chip, truth, face_px, angle, centre, whole)
    if low_res:
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        box = tuple(float(v) * shrink for v in box)
        face = Face(tuple(float(v) * shrink for v in face.box), face.score, face.points * shrink)
    return WildPhoto(degrade(image, degradation, rng), box, degradation, angle, face)


def wild_set(pairs: list[tuple[np.ndarray, Face]], backgrounds: list[np.ndarray], seed: int = 0) -> list[WildPhoto]:
    """One scene per (chip, truth), the degradations taken in turn so each is as common."""
    rng = np.random.default_rng(seed)
    return [wild_photo(chip, truth, backgrounds[k % len(backgrounds)], DEGRADATIONS[k % len(DEGRADATIONS)], rng)
            for k, (chip, truth) in enumerate(pairs)]


def found(detector: FaceDetector, photo: WildPhoto, min_iou: float = 0.3) -> bool:
    """Whether the detector finds the pasted face (its box overlaps the truth's; a turned face's
    true box is the bounding box of its turned corners, larger than a detector's, hence 0.3)."""
    faces = detector.detect(photo.image)
    return bool(faces) and float(iou(np.array([f.box for f in faces]), np.array(photo.box)).max()) >= min_iou


def recall_by_degradation(detector: FaceDetector, photos: list[WildPhoto]) -> dict[str, float]:
    """Share of pasted faces found, for all photos and for each degradation."""
    hits = [(p.degradation, found(detector, p)) for p in photos]
    out = {"all": float(np.mean([h for _, h in hits]))}
    for name in DEGRADATIONS:
        mine = [h for d, h in hits if d == name]
        if mine:
            out[name] = float(np.mean(mine))
    return out

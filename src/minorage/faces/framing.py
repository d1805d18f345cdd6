"""From a face box to the network's square input: one place for training and inference.

The box is widened by `framing.margin` of its width and height on every side (the original
SSR-Net models saw 40 %), squared around its centre, cut out with the image's edge pixels
repeated where it leaves the image, and resized to `framing.size` (64) pixels. With
`framing.align` and the eye points given, the image is first turned about the box's centre so
that the eyes lie level: the models learnt on UTKFace's upright chips, and photos hold tilted heads.

Where a model has a part for faces whose frame leaves the image (`frame_routed`), such a face
(more of its frame than the model's `edge_above` past the image) is framed as that part expects
and marked: the part learnt on frames the edge filled, as in every stored UTKFace face, and the
model's main part on frames that hold the photo's own surroundings.

`template_chip` frames a face another way, for a network trained on dlib's aligned chips (its
age network, measured as a second opinion by `scripts/second_opinion_in_scenes.py`): the
detector's eye and nose points placed where dlib's five-point template puts the eyes and the
base of the nose. A data set built with a `template` framing stores such chips (`frame_detected`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from minorage.config import Framing, Framings

if TYPE_CHECKING:
    from minorage.faces.detection import Face

_BORDERS = {"replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}


def framed_square(box: tuple[float, float, float, float], margin: float) -> tuple[int, int, int, int]:
    """The square (x1, y1, x2, y2), end-exclusive, that a box plus its margin occupies."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    side_px = max(1, int(round(side)))
    return left, top, left + side_px, top + side_px


def filled_share(shape: tuple[int, ...], box: tuple[float, float, float, float], margin: float) -> float:
    """The share of a face's frame that lies past the image, where framing fills it from the
    image's edge: 0 for a face well inside a photo, about half for a UTKFace chip at 20 %."""
    x1, y1, x2, y2 = framed_square(box, margin)
    inside = max(0, min(x2, shape[1]) - max(x1, 0)) * max(0, min(y2, shape[0]) - max(y1, 0))
    return 1.0 - inside / ((x2 - x1) * (y2 - y1))


def leaves_image(shape: tuple[int, ...], box: tuple[float, float, float, float], margin: float, above: float = 0.0) -> bool:
    """Whether more than `above` of a face's frame reaches past the image (any of it, by default)."""
    return filled_share(shape, box, margin) > above


def upright(image: np.ndarray, box: tuple[float, float, float, float], eyes: np.ndarray, side: int, border: str) -> np.ndarray:
    """The `side` x `side` square around the box's centre, turned so the line from the
    image-left eye to the image-right eye is level."""
    (lx, ly), (rx, ry) = np.asarray(eyes, float)[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    turn = cv2.getRotationMatrix2D((cx, cy), float(np.degrees(np.arctan2(ry - ly, rx - lx))), 1.0)
    turn[:, 2] += side / 2 - np.array([cx, cy])  # the box's centre to the square's
    return cv2.warpAffine(image, turn, (side, side), flags=cv2.INTER_LINEAR, borderMode=_BORDERS[border], borderValue=(0, 0, 0))


def cut(image: np.ndarray, square: tuple[int, int, int, int], border: str) -> np.ndarray:
    """The square (x1, y1, x2, y2) of the image, filled by `border` where it leaves the image."""
    x1, y1, x2, y2 = square
    h, w = image.shape[:2]
    pad = max(0, -x1, -y1, x2 - w, y2 - h)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, _BORDERS[border], value=(0, 0, 0))
        x1, y1, x2, y2 = x1 + pad, y1 + pad, x2 + pad, y2 + pad
    return image[y1:y2, x1:x2]


def frame_face(image: np.ndarray, box: tuple[float, float, float, float], framing: Framing, eyes: np.ndarray | None = None) -> np.ndarray:
    """The model's input (size, size, 3) uint8 BGR for one face box in a BGR image; turned
    upright by `eyes` (the image-left eye, then the image-right one) when the framing aligns."""
    if framing.template:
        raise ValueError("this framing places a face on dlib's template, which needs the detector's five points: "
                         "a network trained on it reads faces as a second opinion (`minorage combine --second-opinion`)")
    square = framed_square(box, framing.margin)
    if framing.align and eyes is not None:
        crop = upright(image, box, eyes, square[2] - square[0], framing.border)
    else:
        crop = cut(image, square, framing.border)
    interpolation = cv2.INTER_AREA if crop.shape[0] > framing.size else cv2.INTER_LINEAR
    return cv2.resize(crop, (framing.size, framing.size), interpolation=interpolation)


def frame_routed(image: np.ndarray, box: tuple[float, float, float, float], framings: Framings,
                 eyes: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """One face's model input and whether it goes to the model's edge part: with an edge part,
    a face enough of whose frame leaves the image is framed as that part expects; every other
    face as the main framing says."""
    edge = framings.edge
    filled = edge is not None and leaves_image(image.shape, box, edge.margin, framings.edge_above)
    return frame_face(image, box, edge if filled else framings.main, eyes), filled


def crop_box(image: np.ndarray, face_fraction: float) -> tuple[float, float, float, float]:
    """The face box assumed in a ready-made face crop: its central `face_fraction` of each side.

    A crop made with the model's own framing has face_fraction = 1 / (1 + 2 * margin); a tight
    crop (the face fills the image) has 1.
    """
    h, w = image.shape[:2]
    dx, dy = w * (1 - face_fraction) / 2, h * (1 - face_fraction) / 2
    return dx, dy, w - dx, h - dy


#: dlib's five-point face template on the unit square (`get_face_chip_details`): the subject's
#: left eye's outer and inner corner, the right eye's outer and inner corner, the base of the nose
DLIB_TEMPLATE = np.array([[0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
                          [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
                          [0.4901123135679, 0.6277975316475]])
#: where the detector's image-left eye, image-right eye and nose go: each eye at its corners'
#: middle, the nose tip at the base of the nose (MTCNN has no nose base; a training photo check
#: put the teacher's error at 3.9 years with the nose, 5.1 with the eyes alone)
TEMPLATE_POINTS = np.vstack([DLIB_TEMPLATE[2:4].mean(0), DLIB_TEMPLATE[0:2].mean(0), DLIB_TEMPLATE[4]])


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 least-squares similarity (turn, scale and shift, no shear) taking `src` points to `dst`."""
    rows = [[x, -y, 1.0, 0.0] for x, y in src] + [[y, x, 0.0, 1.0] for x, y in src]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def template_chip(image: np.ndarray, points: np.ndarray, size: int = 64, padding: float = 0.2) -> np.ndarray:
    """The (size, size, 3) chip dlib's networks read: the face turned, scaled and shifted so its
    eyes and nose (the detector's first three points) sit on dlib's template inside a border of
    `padding` of the template's side, black beyond the image. A large reduction is first made
    by area averaging, as dlib's own chip extraction does, so the chip does not alias."""
    target = (padding + TEMPLATE_POINTS) / (2 * padding + 1) * size
    matrix = similarity(np.asarray(points, float)[:3], target)
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))  # chip pixels per image pixel
    if scale < 0.5:
        shrink = 2 * scale
        image = cv2.resize(image, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
        matrix = matrix @ np.diag([1 / shrink, 1 / shrink, 1.0])
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def frame_detected(image: np.ndarray, face: "Face", framing: Framing) -> np.ndarray:
    """A detected face's input as a data set stores it: on dlib's template where the framing
    says so (its margin the template's border), otherwise its box framed (`frame_face`)."""
    if framing.template:
        return template_chip(image, face.points, framing.size, framing.margin)
    return frame_face(image, face.box, framing, face.eyes)


def opinion_chip(image: np.ndarray, points: np.ndarray | None, framings: Framings) -> np.ndarray | None:
    """A detected face's chip for its model's second opinion (`framings.chip` px, on dlib's
    template), or None where the model has none or no face was detected (a crop taken whole)."""
    return template_chip(image, points, framings.chip) if framings.chip and points is not None else None

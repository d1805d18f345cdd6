"""The benchmarks' test scene: a face-free picture scaled to `size` px wide (3:4), with two real
faces pasted in at 1/4 and 1/8 of its width. Shared by detection.py and scan.py."""

from __future__ import annotations

import cv2
import numpy as np


def compose(background: np.ndarray, faces: tuple[np.ndarray, np.ndarray], size: int) -> np.ndarray:
    scene = cv2.resize(background, (size, size * 3 // 4))
    for j, (face, share) in enumerate(zip(faces, (4, 8))):
        side = max(24, size // share)
        x, y = (size // 8) * (1 + 4 * j), size // 10
        scene[y : y + side, x : x + side] = cv2.resize(face, (side, side))
    return scene

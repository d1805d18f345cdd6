"""The paper's artificial eye occlusion (§3.2): a black bar along the eye line.

The bar is a rectangle centred at the midpoint of the two eye centres that MTCNN found, turned
by the slope of the line through them, 25 % of the face box's height tall and 95 % of its width
wide, filled pure black with no anti-aliasing (every pixel is either untouched or 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from minorage.evidence.io import IMAGE_SUFFIXES, ImageReadError, read_image, write_image
from minorage.evidence.paths import display_path
from minorage.evidence.sources import named_or_suffixed, real_sources, walk
from minorage.faces.detection import Face, FaceDetector

BAR_HEIGHT = 0.25  # of the face box's height
BAR_WIDTH = 0.95  # of the face box's width
_SUBPIXEL_BITS = 8  # fillPoly's fixed-point precision for the corners


@dataclass(frozen=True)
class EyeBar:
    """A rotated rectangle: centre (x, y), width along the eye line, height across it, angle in
    degrees (image coordinates, y down: positive turns clockwise on screen)."""

    center: tuple[float, float]
    width: float
    height: float
    angle: float

    def corners(self) -> np.ndarray:
        """(4, 2) corners, clockwise on screen from the top left."""
        a = math.radians(self.angle)
        along = np.array([math.cos(a), math.sin(a)]) * self.width / 2
        across = np.array([-math.sin(a), math.cos(a)]) * self.height / 2
        c = np.array(self.center)
        return np.stack([c - along - across, c + along - across, c + along + across, c - along + across])

    def contains(self, point: np.ndarray) -> bool:
        """Whether a point lies inside the rectangle (on its border counts)."""
        a = math.radians(self.angle)
        d = np.asarray(point, float) - np.array(self.center)
        u = d[0] * math.cos(a) + d[1] * math.sin(a)
        v = -d[0] * math.sin(a) + d[1] * math.cos(a)
        return abs(u) <= self.width / 2 + 1e-9 and abs(v) <= self.height / 2 + 1e-9

    def to_dict(self) -> dict:
        return {
            "center": [round(self.center[0], 2), round(self.center[1], 2)],
            "width": round(self.width, 2),
            "height": round(self.height, 2),
            "angle": round(self.angle, 3),
            "corners": np.round(self.corners(), 2).tolist(),
        }


def eye_bar(face: Face, width_fraction: float = BAR_WIDTH, height_fraction: float = BAR_HEIGHT) -> EyeBar:
    """The bar for one detected face (§3.2)."""
    (lx, ly), (rx, ry) = face.eyes
    angle = math.degrees(math.atan2(ry - ly, rx - lx))
    return EyeBar(
        center=((lx + rx) / 2, (ly + ry) / 2),
        width=face.width * width_fraction,
        height=face.height * height_fraction,
        angle=angle,
    )


def fill_bar(image: np.ndarray, bar: EyeBar) -> None:
    """Fill the bar black in place (8-connected edges: no blending with the background)."""
    corners = np.round(bar.corners() * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(image, [corners], (0, 0, 0), lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)


def occlude(image: np.ndarray, face: Face) -> tuple[np.ndarray, EyeBar]:
    """The paper's eye occlusion of one face: (occluded copy, the bar's geometry)."""
    out, (bar,) = occlude_all(image, [face])
    return out, bar


def occlude_all(image: np.ndarray, faces: list[Face]) -> tuple[np.ndarray, list[EyeBar]]:
    """Every face in an image barred; the input is never modified."""
    bars = [eye_bar(face) for face in faces]
    out = image.copy()
    for bar in bars:
        fill_bar(out, bar)
    return out, bars


def eyes_occluded(image: np.ndarray, face: Face, dark: int = 40, share: float = 0.85) -> bool:
    """Whether a black bar (or anything as dark and as solid) covers the eye line: at least
    `share` of the pixels in a thin band from one eye to the other are darker than `dark` in
    every channel. Pupils, lashes and the bridge of the nose between them are not all black;
    a bar is. Used by `scan` to tell the analyst which faces came barred."""
    band = EyeBar(center=tuple(face.eyes.mean(axis=0)), width=float(np.linalg.norm(face.eyes[1] - face.eyes[0])) + 1,
                  height=max(2.0, face.height * 0.08), angle=eye_bar(face).angle)
    corners = band.corners()
    h, w = image.shape[:2]  # the band's pixels are filled in its own bounding rectangle only
    x0, y0 = (max(0, int(np.floor(v)) - 1) for v in corners.min(axis=0))
    x1, y1 = min(w, int(np.ceil(corners[:, 0].max())) + 2), min(h, int(np.ceil(corners[:, 1].max())) + 2)
    if x1 <= x0 or y1 <= y0:
        return False
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    fixed = np.round(corners * (1 << _SUBPIXEL_BITS)).astype(np.int32) - (np.array([x0, y0], np.int32) << _SUBPIXEL_BITS)
    cv2.fillPoly(mask, [fixed], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    inside = image[y0:y1, x0:x1][mask.astype(bool)]
    return bool(len(inside)) and float(np.mean(inside.max(axis=1) < dark)) >= share


# ---------------------------------------------------------------------------------------------
# `minorage occlude`: barred copies of image files


def occlude_files(
    paths: Iterable[str | Path], out_dir: Path, detector: FaceDetector, max_pixels: int, progress: bool = True
) -> Iterator[dict]:
    """Write an eye-barred copy of each image under `out_dir` (same relative path and name) and
    yield one sidecar entry per input: its faces and bars, or why it was not copied."""
    out_dir = Path(out_dir)
    roots = real_sources(paths)
    files = [(Path(e.path), e.relative) for e in walk(roots) if named_or_suffixed(e, roots, IMAGE_SUFFIXES)]
    for path, relative in tqdm(files, desc="occlude", unit="img", disable=not progress, leave=False):
        entry: dict = {"path": display_path(path)}
        target = out_dir / relative
        try:
            if target.exists() and target.resolve() == path.resolve():
                raise ImageReadError("refused", f"{path}: output would overwrite the input; choose another --out")
            image = read_image(path, max_pixels)
        except ImageReadError as exc:
            yield {**entry, "status": exc.status, "error": str(exc)}
            continue
        faces = detector.detect(image)
        if not faces:
            yield {**entry, "status": "no_face", "error": "no face found: not copied"}
            continue
        barred, bars = occlude_all(image, faces)
        written = write_image(target, barred)
        yield {
            **entry,
            "status": "ok",
            "output": str(written.relative_to(out_dir)),
            "faces": [{**face.to_dict(), "bar": bar.to_dict()} for face, bar in zip(faces, bars)],
        }

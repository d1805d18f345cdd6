"""Ages for the files a user names: `minorage predict`.

Files are read one by one, framed the way the model's card says, and sent to the network in
batches; a file that cannot be read becomes a row with an `error`, never an exception, and rows
come out in the order of the files.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .config import InferenceConfig
from .framing import crop_box, frame_face
from .io import ImageReadError, iter_files, read_image
from .metrics import age_group, is_minor
from .models import AgeEstimator

CROP_COLUMNS = ("path", "age", "group", "minor", "status", "error")


@dataclass(frozen=True)
class CropOptions:
    """How a ready-made face crop is read: the face box is its central `face_fraction`."""

    face_fraction: float = 1.0
    batch_size: int = InferenceConfig.batch_size
    max_pixels: int = InferenceConfig.max_pixels


def age_row(path: Path, age: float) -> dict:
    return {"path": str(path), "age": float(age), "group": age_group(age), "minor": is_minor(age), "status": "ok"}


def error_row(path: Path, exc: ImageReadError) -> dict:
    return {"path": str(path), "age": None, "group": None, "minor": None, "status": exc.status, "error": str(exc)}


def predict_crops(
    paths: Iterable[str | Path], estimator: AgeEstimator, options: CropOptions = CropOptions(), progress: bool = True
) -> Iterator[dict]:
    """One row per file: each image is one face crop."""
    files = list(iter_files(paths))
    pending: list[tuple[Path, np.ndarray | ImageReadError]] = []

    def flush() -> Iterator[dict]:
        faces = [item for _, item in pending if isinstance(item, np.ndarray)]
        ages = iter(estimator.predict(np.stack(faces)) if faces else [])
        for path, item in pending:
            yield error_row(path, item) if isinstance(item, ImageReadError) else age_row(path, next(ages))
        pending.clear()

    for path in tqdm(files, desc="predict", unit="img", disable=not progress, leave=False):
        try:
            image = read_image(path, options.max_pixels)
            face = frame_face(image, crop_box(image, options.face_fraction), estimator.framing)
            pending.append((path, face))
        except ImageReadError as exc:
            pending.append((path, exc))
        if len(pending) >= options.batch_size:
            yield from flush()
    yield from flush()

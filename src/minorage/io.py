"""Safe image and video reading: evidence is opened read-only, every failure is a clear
`ImageReadError`.

Out comes an 8-bit BGR array (OpenCV's order) with the EXIF orientation applied, whatever the
file held: grayscale, alpha, CMYK, 16-bit, the first frame of a GIF. Images with more pixels
than the limit are refused before they are decoded (decompression bombs). A video gives one
frame every so many seconds.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".wmv", ".mpg", ".mpeg", ".3gp", ".flv"})

Image.MAX_IMAGE_PIXELS = None  # the limit is ours, checked below, with a clear message


class ImageReadError(Exception):
    """An image that cannot be used; `status` is a short machine-readable reason."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def looks_like_image(data: bytes) -> bool:
    """Whether the bytes start like one of the image formats we read (magic numbers)."""
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding pixels; None if unrecognised."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def decode_image(data: bytes, max_pixels: int, name: str = "image") -> np.ndarray:
    """Decode image bytes to uint8 BGR (H, W, 3), EXIF orientation applied."""
    if not data:
        raise ImageReadError("empty", f"{name}: empty file (0 bytes)")
    size = _header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageReadError(
            "too_large",
            f"{name}: {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels is above the limit of "
            f"{max_pixels:,} (possible decompression bomb; raise --max-pixels to read it)",
        )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        if size is None and not looks_like_image(data):
            raise ImageReadError("not_image", f"{name}: not an image (no known image format)")
        raise ImageReadError("corrupt", f"{name}: image data is corrupt or truncated and cannot be decoded")
    return image


def read_image(path: str | os.PathLike, max_pixels: int) -> np.ndarray:
    """Read one image file read-only; see `decode_image`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:  # read-only: evidence is never modified
            data = f.read()
    except PermissionError as exc:
        raise ImageReadError("unreadable", f"{path}: permission denied ({exc.strerror})") from exc
    except IsADirectoryError as exc:
        raise ImageReadError("unreadable", f"{path}: is a directory") from exc
    except FileNotFoundError as exc:
        raise ImageReadError("missing", f"{path}: no such file") from exc
    except OSError as exc:
        raise ImageReadError("unreadable", f"{path}: {exc.strerror or exc}") from exc
    return decode_image(data, max_pixels, str(path))


def video_frames(path: str | os.PathLike, every: float, max_frames: int, max_pixels: int) -> Iterator[tuple[float, np.ndarray]]:
    """(time in seconds, BGR frame) for one frame every `every` seconds, at most `max_frames`;
    the frames between are only grabbed, not decoded. Raises `ImageReadError` for a video that
    does not open, has frames above `max_pixels`, or yields no frame at all."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ImageReadError("corrupt", f"{path}: the video cannot be opened (corrupt, truncated or an unknown codec)")
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        step = max(1, int(round(fps * every)))
        width, height = capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)
        if width * height > max_pixels:
            raise ImageReadError("too_large", f"{path}: {int(width)}x{int(height)} frames are above the limit of {max_pixels:,} pixels")
        frame_no, looked = 0, 0
        while looked < max_frames and capture.grab():
            if frame_no % step == 0:
                ok, frame = capture.retrieve()
                if ok:
                    looked += 1
                    yield round(frame_no / fps, 3), frame
            frame_no += 1
        if looked == 0:
            raise ImageReadError("corrupt", f"{path}: no frame could be decoded")
    finally:
        capture.release()


_WRITABLE = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def write_image(target: Path, image: np.ndarray, jpeg_quality: int = 95) -> Path:
    """Write an image under `target` (PNG where its suffix is not writable, e.g. .gif); creates
    folders, never writes over an existing file's inode in place. Returns the path written."""
    if target.suffix.lower() not in _WRITABLE:
        target = target.with_name(target.name + ".png")
    ok, data = cv2.imencode(target.suffix, image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise OSError(f"could not encode {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    tmp.write_bytes(data.tobytes())
    tmp.replace(target)
    return target


def iter_files(
    paths: Iterable[str | os.PathLike], suffixes: frozenset[str] = IMAGE_SUFFIXES
) -> Iterator[tuple[Path, Path]]:
    """(file, its path relative to the argument that named it) for files named directly
    (always, whatever their suffix) and, in folders, recursively, those with one of `suffixes`;
    sorted, each once; symlinked folders are not followed (no loops)."""
    seen: set[Path] = set()
    for raw in paths:
        root = Path(raw)
        if root.is_dir():
            found = (
                Path(folder) / name
                for folder, _dirs, names in os.walk(root, followlinks=False)
                for name in names
                if Path(name).suffix.lower() in suffixes
            )
            candidates = [(path, path.relative_to(root)) for path in sorted(found)]
        else:
            candidates = [(root, Path(root.name))]
        for path, relative in candidates:
            if path not in seen:
                seen.add(path)
                yield path, relative

"""Safe image and video reading: evidence is opened read-only, every failure is a clear
`ImageReadError`.

Forensic rules kept here, once, for every command:
- a file is opened read-only, without following a final symbolic link, without blocking (a FIFO
  or a device is refused from its `fstat`, never read) and, where the system allows it, without
  changing its access time (`O_NOATIME`);
- memory stays bounded whatever a file claims or holds: an image is read only up to a byte limit,
  and its width and height are read from its header, for every format, before any pixel is
  decoded; only formats whose header has been checked reach a decoder (decompression bombs);
- out comes an 8-bit BGR array (OpenCV's order) with the orientation applied, whatever the file
  held: grayscale, alpha, CMYK, 16-bit, the first frame of a GIF, a HEIC/HEIF photo;
- a video is decoded from the same open file (PyAV), one frame every so many seconds by the
  frames' own time stamps, and never fewer than one frame in `MAX_FRAME_GAP` x seconds, so a
  container that claims an absurd frame rate cannot hide its frames.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from minorage.config import MAX_FRAME_GAP, InferenceConfig
from minorage.evidence.paths import display_path, open_no_atime

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".wmv", ".mpg", ".mpeg", ".3gp", ".flv"})

#: Formats read, by Pillow's name for them; OpenCV decodes the first group (fast, EXIF applied),
#: Pillow the rest. Anything else (Radiance HDR, EPS, PFM, ...) is not an image minorage reads.
OPENCV_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF"})  # MPO: a camera's JPEG
PILLOW_FORMATS = frozenset({"HEIF"})
_OPENERS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "HEIF")  # Pillow's openers of those (JPEG's opens MPO)
READ_FORMATS = "JPEG, PNG, WebP, BMP, TIFF, GIF, HEIC/HEIF"

Image.MAX_IMAGE_PIXELS = None  # the limit is ours, checked below, with a clear message
pillow_heif.register_heif_opener()
Image.init()  # every plugin registered, so that `formats=` below can name them

_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")


class ImageReadError(Exception):
    """A file that cannot be used; `status` is a short machine-readable reason."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------
# Opening evidence


@dataclass(frozen=True)
class Opened:
    """An evidence file open for reading: the file, its `fstat`, whether its access time is kept."""

    file: BinaryIO
    info: os.stat_result
    atime_kept: bool


_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _open_error(path: str, exc: OSError) -> ImageReadError:
    if isinstance(exc, FileNotFoundError):
        return ImageReadError("missing", f"{path}: no such file")
    if exc.errno == errno.ELOOP:
        return ImageReadError("unreadable", f"{path}: is a symbolic link (links are recorded, not opened as files)")
    if isinstance(exc, PermissionError):
        return ImageReadError("unreadable", f"{path}: permission denied")
    if isinstance(exc, IsADirectoryError):
        return ImageReadError("unreadable", f"{path}: is a folder")
    return ImageReadError("unreadable", f"{path}: {exc.strerror or exc}")


@contextmanager
def open_evidence(path: str | os.PathLike) -> Iterator[Opened]:
    """Open one evidence file read-only (see the module's rules); a FIFO, socket or device is
    refused with status `not_regular` before a byte is read."""
    name = display_path(path)
    try:
        fd, kept = open_no_atime(path, _OPEN_FLAGS)
    except OSError as exc:
        raise _open_error(name, exc) from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ImageReadError("not_regular", f"{name}: not a regular file (FIFO, socket or device); not read")
    with os.fdopen(fd, "rb") as f:
        yield Opened(f, info, kept)


def read_capped(opened: Opened, max_bytes: int, name: str) -> bytes:
    """The whole file if it holds at most `max_bytes`; refused from its size, and never more than
    one byte past the limit read (a file that grows while read)."""
    if opened.info.st_size <= max_bytes:
        data = opened.file.read(max_bytes + 1)
        if len(data) <= max_bytes:
            return data
    raise ImageReadError("too_large", f"{name}: more than {max_bytes:,} bytes, above the --max-bytes limit for an image; not decoded")


# ---------------------------------------------------------------------------------------------
# Images


_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def is_heif(head: bytes) -> bool:
    """An ISO media file whose brand is HEIF's (an iPhone photo), not a video."""
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def looks_like_image(data: bytes) -> bool:
    """Whether the bytes start like one of the image formats we read (magic numbers)."""
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP") or is_heif(data)


def media_of(path: str | os.PathLike, head: bytes) -> str:
    """image, video or other: an image name or image bytes make an image; else a video name
    or video bytes a video (a renamed file is still read for what it is)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in IMAGE_SUFFIXES or looks_like_image(head):
        return "image"
    if suffix in VIDEO_SUFFIXES or head[4:8] == b"ftyp" or head.startswith(b"\x1a\x45\xdf\xa3") or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return "video"
    return "other"


def _header(data: bytes) -> tuple[str, tuple[int, int]] | None:
    """(format, (width, height)) from the header of a format we read, no pixel decoded; None if
    it is none of them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=_OPENERS) as im:
                return im.format, im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        return None


def decode_image(data: bytes, max_pixels: int, name: str = "image") -> np.ndarray:
    """Decode image bytes to uint8 BGR (H, W, 3), orientation applied; dimensions are checked
    from the header first, for every format."""
    if not data:
        raise ImageReadError("empty", f"{name}: empty file (0 bytes)")
    header = _header(data)
    if header is None:
        if looks_like_image(data):
            raise ImageReadError("corrupt", f"{name}: image header is corrupt or truncated")
        raise ImageReadError("not_image", f"{name}: not an image in a format minorage reads ({READ_FORMATS})")
    fmt, (width, height) = header
    if width * height > max_pixels:
        raise ImageReadError(
            "too_large",
            f"{name}: {width}x{height} = {width * height:,} pixels is above the limit of "
            f"{max_pixels:,} (possible decompression bomb; raise --max-pixels to read it)",
        )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if fmt in OPENCV_FORMATS else _pillow_decode(data)
    if image is None:
        raise ImageReadError("corrupt", f"{name}: image data is corrupt or truncated and cannot be decoded")
    return image


def _pillow_decode(data: bytes) -> np.ndarray | None:
    """The formats OpenCV does not read (HEIF), through Pillow, as 8-bit BGR."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError):
        return None
    return cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR)


def read_image(path: str | os.PathLike, max_pixels: int, max_bytes: int = InferenceConfig.max_bytes) -> np.ndarray:
    """Read one image file named by the caller (a link is read at its target; walks decide
    about links themselves), as evidence: see `open_evidence`, `decode_image`."""
    with open_evidence(os.path.realpath(path)) as opened:
        data = read_capped(opened, max_bytes, display_path(path))
    return decode_image(data, max_pixels, display_path(path))


# ---------------------------------------------------------------------------------------------
# Videos


def video_frames(f: BinaryIO, name: str, every: float, max_frames: int, max_pixels: int,
                 threads: int = 0) -> Iterator[tuple[float, np.ndarray]]:
    """(time in seconds, BGR frame) for one frame every `every` seconds by the frames' time
    stamps, and at least one in `MAX_FRAME_GAP * every` frames whatever the container claims;
    at most `max_frames`. Raises `ImageReadError` for a video that does not open, has frames
    above `max_pixels`, or yields no frame at all."""
    import av  # loaded only where videos are read

    try:
        container = av.open(f, "r")
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise ImageReadError("corrupt", f"{name}: the video cannot be opened (corrupt, truncated or an unknown codec): {exc}") from exc
    with container:
        if not container.streams.video:
            raise ImageReadError("corrupt", f"{name}: no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        _check_frame_size(stream.codec_context.width, stream.codec_context.height, max_pixels, name)
        rate = float(stream.guessed_rate or stream.average_rate or 25)
        gap = max(1, int(round(MAX_FRAME_GAP * every)))
        looked, since, due = 0, gap, 0.0
        try:
            for index, frame in enumerate(container.decode(stream)):
                at = float(frame.time) if frame.time is not None else index / rate
                if at >= due or since >= gap:
                    _check_frame_size(frame.width, frame.height, max_pixels, name)
                    yield round(at, 3), frame.to_ndarray(format="bgr24")
                    looked, since, due = looked + 1, 0, at + every
                    if looked >= max_frames:
                        break
                since += 1
        except av.FFmpegError as exc:
            if looked == 0:
                raise ImageReadError("corrupt", f"{name}: no frame could be decoded: {exc}") from exc
        if looked == 0:
            raise ImageReadError("corrupt", f"{name}: no frame could be decoded")


def _check_frame_size(width: int, height: int, max_pixels: int, name: str) -> None:
    if width * height > max_pixels:
        raise ImageReadError("too_large", f"{name}: {width}x{height} frames are above the limit of {max_pixels:,} pixels")


# ---------------------------------------------------------------------------------------------
# Writing (never over evidence: see `free_name`)


_WRITABLE = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def free_name(target: Path) -> Path:
    """`target`, or `stem (2).ext`, `stem (3).ext`, ... : the first name not taken."""
    candidate, n = target, 1
    while os.path.lexists(candidate):
        n += 1
        candidate = target.with_name(f"{target.stem} ({n}){target.suffix}")
    return candidate


def write_image(target: Path, image: np.ndarray, jpeg_quality: int = 95) -> Path:
    """Write an image at `target` (PNG where its suffix is not writable, e.g. .gif), or at the
    first free name beside it: an existing file is never replaced. Returns the path written."""
    if target.suffix.lower() not in _WRITABLE:
        target = target.with_name(target.name + ".png")
    ok, data = cv2.imencode(target.suffix, image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise OSError(f"could not encode {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        target = free_name(target)
        try:
            with open(target, "xb") as f:  # exclusive: fails rather than replace a file
                f.write(data.tobytes())
            return target
        except FileExistsError:  # taken between the look and the write: try the next name
            continue

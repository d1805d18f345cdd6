"""Where minorage finds its material, and the typed defaults every stage shares.

All weights and data come from one folder, `MINORAGE_SHARED` (default `../shared` beside the
repository), so that a user elsewhere points the tool at their own copy with one variable.
Nothing is ever downloaded: a missing file is an error that says where to get it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SHARED_ENV = "MINORAGE_SHARED"

#: The four SSR-Net weight files released with the original paper (Yang et al., IJCAI 2018).
PRETRAINED_NAMES = ("imdb", "morph2", "wiki", "megaface_asian")

#: Ages are grouped as in the paper (Anda et al., 2019): [0-5] [6-10] [11-15] [16-17] [18-25].
AGE_GROUPS: tuple[tuple[str, int, int], ...] = (
    ("0-5", 0, 5),
    ("6-10", 6, 10),
    ("11-15", 11, 15),
    ("16-17", 16, 17),
    ("18-25", 18, 25),
)
ADULT_GROUP = "26+"
MINOR_LIMIT = 18  # a true age below this is a minor
CHILD_LIMIT = 16  # a true age below this is below the [16-17] group, the minors nearest adulthood
MINOR_BELOW = 17.5  # an estimate below this is flagged "probably a minor" (rounds to 17 or less),
# unless the model's card sets its own threshold, calibrated on validation faces

HOW_TO_OBTAIN = {
    "ssrnet": (
        "the SSR-Net weights are the .h5 files in the `pre-trained/` folder of the public SSR-Net "
        "repository (shamangary/SSR-Net, Apache-2.0); put them in $MINORAGE_SHARED/weights/ssrnet/"
    ),
    "utkface": (
        "UTKFace 'Aligned & Cropped Faces' is published by its authors (Zhang, Song and Qi, "
        "CVPR 2017) for non-commercial research; put the .jpg.chip.jpg files in "
        "$MINORAGE_SHARED/data/utkface/"
    ),
    "fixture": "the conformance fixture ships in the project's shared folder as fixtures/",
}


class MissingResourceError(FileNotFoundError):
    """A weight or data file that minorage needs is not where the configuration says."""

    def __init__(self, path: Path, kind: str):
        hint = HOW_TO_OBTAIN.get(kind, "")
        super().__init__(
            f"missing {kind} file: {path}\n  ({SHARED_ENV}={shared_root()}; {hint})"
        )
        self.path = path


def _repo_root() -> Path | None:
    """The source checkout this module runs from, if any (editable installs, tests, CI)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def shared_root() -> Path:
    """`$MINORAGE_SHARED`, else `../shared` beside the repository (or the working directory)."""
    env = os.environ.get(SHARED_ENV)
    if env:
        return Path(env).expanduser().resolve()
    base = _repo_root() or Path.cwd()
    return (base / ".." / "shared").resolve()


def require(path: Path, kind: str) -> Path:
    """Return `path` if it exists, else raise an error naming it and how to obtain it."""
    if not path.exists():
        raise MissingResourceError(path, kind)
    return path


def ssrnet_weights(name: str) -> Path:
    """The original Keras weights of one of the released SSR-Net models."""
    if name not in PRETRAINED_NAMES:
        raise ValueError(f"unknown pretrained SSR-Net {name!r}; one of {', '.join(PRETRAINED_NAMES)}")
    return require(shared_root() / "weights" / "ssrnet" / f"{name}.h5", "ssrnet")


def utkface_dir() -> Path:
    """The UTKFace photos (labels in the file names)."""
    return require(shared_root() / "data" / "utkface", "utkface")


def ssrnet_fixture() -> Path:
    """Outputs of the original Keras SSR-Net on 64 faces, to check the port against."""
    return require(shared_root() / "fixtures" / "ssrnet_reference.npz", "fixture")


@dataclass(frozen=True)
class Framing:
    """How a face box becomes the network's square input (the paper's §3.3 resize to 64x64).

    The original SSR-Net models were trained on the detector's box widened by `margin` of its
    width/height on every side; outside the image the edge pixels are repeated. A model carries
    its framing in its metadata so training and inference cannot drift apart.
    """

    margin: float = 0.4
    size: int = 64
    border: str = "replicate"  # or "constant" (black)

    def to_dict(self) -> dict:
        return {"margin": self.margin, "size": self.size, "border": self.border}

    @classmethod
    def from_dict(cls, data: dict) -> "Framing":
        return cls(margin=float(data["margin"]), size=int(data["size"]), border=str(data["border"]))


#: Whatever a video's container claims about its frame rate, at least one frame in this many
#: times `video_every` is looked at: a header cannot hide frames from the scan.
MAX_FRAME_GAP = 30


@dataclass(frozen=True)
class InferenceConfig:
    """Defaults of the inference commands."""

    batch_size: int = 256
    max_pixels: int = 100_000_000  # images above this are refused as possible decompression bombs
    max_bytes: int = 256 * 2**20  # image files above this are not read into memory (videos stream)
    threads: int = 2
    video_every: float = 1.0  # seconds between the video frames looked at
    max_video_frames: int = 3600  # frames looked at per video, at most


@dataclass(frozen=True)
class ScanConfig:
    """Defaults of `minorage scan` (each is also a command-line option)."""

    workers: int = 0  # processes that read and detect; 0 = one per CPU core
    min_face_size: int = 32  # px: smaller faces hold too little detail for a 64x64 age model, and
    # looking for them costs a third more time per photo (--min-face-size 20 finds them)
    video_every: float = InferenceConfig.video_every
    max_video_frames: int = InferenceConfig.max_video_frames
    max_pixels: int = InferenceConfig.max_pixels  # images and frames above are refused
    max_bytes: int = InferenceConfig.max_bytes
    follow_links: bool = False  # read what links outside the sources point to
    file_timeout: float = 600.0  # seconds one file may take before its worker is replaced
    thumbnail: int = 96  # side of the face thumbnails kept in the case (pixels)
    in_flight: int = 4  # files queued per worker: bounds memory whatever the collection size
    age_batch: int = 64  # faces gathered before the age model runs (files still commit one by one)

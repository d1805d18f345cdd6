"""Where minorage finds its material, and the typed defaults every stage shares.

All weights and data come from one folder, `MINORAGE_SHARED` (default `../shared` beside the
repository), so that a user elsewhere points the tool at their own copy with one variable.
Nothing is ever downloaded: a missing file is an error that says where to get it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

SHARED_ENV = "MINORAGE_SHARED"

#: The four SSR-Net weight files released with the original paper (Yang et al., IJCAI 2018).
PRETRAINED_NAMES = ("imdb", "morph2", "wiki", "megaface_asian")
#: how `evaluate` may show the test faces: as they are, or as seized photos may hold them
EVALUATION_LOOKS = ("as-is", "grayscale", "sepia", "low-resolution", "jpeg")

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
class SSRNetConfig:
    """Architecture hyper-parameters (the paper's 3-3-3, lambda_local = lambda_d = 1)."""

    stages: tuple[int, int, int] = (3, 3, 3)
    lambda_local: float = 1.0
    lambda_d: float = 1.0
    V: int = 101  # ages span [0, V); 101 for the released weights, 26 for [0, 25]
    image_size: int = 64

    @classmethod
    def from_dict(cls, data: dict) -> "SSRNetConfig":
        return cls(
            stages=tuple(data["stages"]),
            lambda_local=float(data["lambda_local"]),
            lambda_d=float(data["lambda_d"]),
            V=int(data["V"]),
            image_size=int(data["image_size"]),
        )


@dataclass(frozen=True)
class ResNetConfig:
    """The residual age network (`model.resnet`): dlib's age predictor's layout and its 81 ages."""

    widths: tuple[int, int, int] = (64, 128, 256)
    ages: tuple[float, ...] = (0.25, *range(1, 81))  # what each softmax output stands for
    image_size: int = 64

    @property
    def V(self) -> int:
        """Ages span [0, V), as for SSR-Net: one past the oldest output."""
        return int(max(self.ages)) + 1

    @classmethod
    def from_dict(cls, data: dict) -> "ResNetConfig":
        return cls(widths=tuple(data["widths"]), ages=tuple(float(a) for a in data["ages"]), image_size=int(data["image_size"]))


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
    align: bool = False  # turn the face upright by its eye line first (UTKFace's chips are upright)
    template: bool = False  # instead of the box: the detector's eyes and nose placed on dlib's five-point
    # template, `margin` its border (`framing.template_chip`), for a network trained on dlib's chips

    def to_dict(self) -> dict:
        """The framing as cards and data sets record it (`template` only where set, so the
        framings recorded before it read and hash as they did)."""
        out = {"margin": self.margin, "size": self.size, "border": self.border, "align": self.align}
        return {**out, "template": True} if self.template else out

    @classmethod
    def from_dict(cls, data: dict) -> "Framing":
        return cls(margin=float(data["margin"]), size=int(data["size"]), border=str(data["border"]),
                   align=bool(data.get("align", False)), template=bool(data.get("template", False)))


class Framings(NamedTuple):
    """How a model frames its faces (`AgeEstimator.framings`): for its main part, and for its edge
    part where it has one, which reads the faces more than `edge_above` of whose frame (at the
    edge part's margin) lies past the image; with a second opinion, also a `chip` px chip aligned
    to dlib's template (`framing.template_chip`) for it."""

    main: Framing
    edge: Framing | None = None
    edge_above: float = 0.0
    chip: int = 0


#: Whatever a video's container claims about its frame rate, at least one frame in this many
#: times `video_every` is looked at: a header cannot hide frames from the scan.
MAX_FRAME_GAP = 30


@dataclass(frozen=True)
class InferenceConfig:
    """Defaults of the inference commands."""

    batch_size: int = 256
    max_pixels: int = 100_000_000  # images above this are refused as possible decompression bombs
    max_bytes: int = 256 * 2**20  # image files above this are not read into memory (videos stream)
    threads: int = 0  # files read and searched for faces at once, in threads; 0 = one per CPU core
    video_every: float = 1.0  # seconds between the video frames looked at
    max_video_frames: int = 3600  # frames looked at per video, at most
    face_fraction: float = 1.0  # with --crops, where no face is found: the central share of each side taken as the face box
    pyramid_factor: float = 0.842  # the detector's image pyramid: twice the scales of MTCNN's 0.709,
    # which find more eye-barred faces in whole photos for about a ninth more detection time


@dataclass(frozen=True)
class ScanConfig:
    """Defaults of `minorage scan` (each is also a command-line option)."""

    workers: int = 0  # processes that read and detect; 0 = one per CPU core
    min_face_size: int = 32  # px: smaller faces hold too little detail for a 64x64 age model, and
    # looking for them costs a third more time per photo (--min-face-size 20 finds them)
    pyramid_factor: float = 0.842  # `predict`'s finer pyramid: at 32 px it finds 98 % of the barred faces in
    # scenes, MTCNN's 0.709 96 % (docs/research.md, animal faces among the negatives), for more detection time
    video_every: float = InferenceConfig.video_every
    max_video_frames: int = InferenceConfig.max_video_frames
    max_pixels: int = InferenceConfig.max_pixels  # images and frames above are refused
    max_bytes: int = InferenceConfig.max_bytes
    follow_links: bool = False  # read what links outside the sources point to
    minor_above: float | None = None  # flag by calibrated p_minor above this instead of the age threshold
    file_timeout: float = 600.0  # seconds one file may take before its worker is replaced
    thumbnail: int = 96  # side of the face thumbnails kept in the case (pixels)
    in_flight: int = 4  # files queued per worker: bounds memory whatever the collection size
    age_batch: int = 64  # faces gathered before the age model runs (files still commit one by one)


@dataclass(frozen=True)
class DetectorConfig:
    """The cascade's settings; the defaults are MTCNN's usual ones."""

    min_face_size: int = 20  # pixels; larger is faster (a smaller pyramid)
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # P-Net, R-Net, O-Net scores
    yunet_threshold: float = 0.5  # YuNet's score for a proposal (the O-Nets still decide)
    yunet_face_px: int = 0  # 0: YuNet looks at the whole image; else at the image scaled so that a face
    # of min_face_size is this many pixels (fewer pixels, less time, where only larger faces are wanted)
    factor: float = 0.709  # pyramid step (MTCNN's; `predict` and `scan` set their own)
    weights: str = "union+yunet"  # "union+yunet" (P-Net's and YuNet's proposals, each through the stock
    # and the eye-bar-tuned R/O-Nets: every face any of them finds), "union" (P-Net's proposals
    # only: a quarter less time, fewer faces in whole scenes), "occlusion" (the tuned pair alone),
    # "stock", "yunet" (YuNet's proposals only), or a folder with pnet/rnet/onet.pt
    crop_padding: float = 0.25  # border (of the image's side) for faces at the edge; 0 = never
    tuned: str = "occlusion"  # the eye-bar-tuned R/O-Net pair the unions run beside the stock one:
    # the shipped one, or a folder with rnet/onet.pt (`minorage detector train`)

    def __post_init__(self) -> None:
        """Refuse settings a pyramid cannot be built with (a step of 1 or more never ends)."""
        if not 0 < self.factor < 1:
            raise ValueError(f"the pyramid factor must lie strictly between 0 and 1, got {self.factor}")
        if self.min_face_size < 1:
            raise ValueError(f"the smallest face must be at least 1 pixel, got {self.min_face_size}")

    @property
    def yunet_scale(self) -> float:
        """The scale YuNet looks at an image by (never enlarged)."""
        return min(1.0, self.yunet_face_px / self.min_face_size) if self.yunet_face_px else 1.0



@dataclass(frozen=True)
class DetectorTrainingConfig:
    """Everything that decides the fine-tuned weights (recorded beside them)."""

    photos: int = 3000  # training photos drawn from the non-held-out part
    holdout_every: int = 5  # content hash mod this == 0: held out (20 %)
    seed: int = 0
    epochs: int = 4
    lr: float = 1e-4
    batch_size: int = 256
    positives_per_face: int = 4
    parts_per_face: int = 3
    negatives_per_face: int = 5
    negatives_per_picture: int = 300  # per scale and mirror image
    negative_scales: tuple[float, ...] = (0.35, 0.5, 0.7, 1.0, 1.4, 2.0)
    pad: float = 0.25  # photos are tight crops: detected padded, as `FaceDetector.detect_padded`
    rotate: float = 25.0  # half the photos turned by up to this many degrees, so points follow a tilt
    scenes: int = 0  # scenes per photo: each photo and its eye-barred copy also pasted into that
    # many training face-free pictures, turned and degraded (`faces.wild`: grayscale, sepia, low
    # resolution, JPEG, blur, noise, cut by the edge): R-Net rejected such faces that P-Net proposed
    negatives: str = ""  # a folder of more face-free pictures searched through (animals, toys: faces
    # that are not human); the part not held out by content hash (`holdout_every`) gives negatives too
    negatives_per_folder_picture: int = 30  # per scale and mirror image: the folder's many small
    # pictures must not crowd out the other negatives



@dataclass(frozen=True)
class DatasetConfig:
    """What decides a data set's content (recorded in dataset.json)."""

    sources: tuple[tuple[str, str], ...]  # (reader name, folder)
    per_age: int = 250
    min_age: int = 0
    max_age: int = 25
    adults_per_age: int = 0  # photos per age above max_age, for the minor/adult decision
    adult_max_age: int = 60
    seed: int = 0
    test_fraction: float = 0.2
    near_duplicate_bits: int = 4  # chosen on UTKFace, see the README's data set section
    copy_min_correlation: float = 0.9  # near copies must look alike pixel by pixel too (0: hash only, as data sets built by minorage 0.1)
    framing: Framing = Framing()
    detector: DetectorConfig = DetectorConfig(weights="stock")  # the paper's MTCNN, on unbarred photos

    def to_dict(self) -> dict:
        out = asdict(self)
        out["sources"] = [list(s) for s in self.sources]
        return out


@dataclass(frozen=True)
class TrainConfig:
    """Every choice of a training run; the defaults are the paper's recipe."""

    variant: str = "org+ocl"  # org | ocl | org+ocl: which faces to train on
    init: str = "imdb"  # imdb | morph2 | wiki | megaface_asian | scratch | a checkpoint path
    init_member: int = 0  # with `init` an ensemble checkpoint: which of its networks to start from
    epochs: int = 90
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine
    loss: str = "l1"  # l1 | smooth_l1 | dldl (the residual network: L1 plus a label distribution, `label_sigma`)
    label_sigma: float = 2.0  # with dldl, the width in years of the Gaussian each target is spread over
    V: int = 26  # output range [0, V); the residual network's is fixed at 81
    max_age: int = 25  # ages above are adults: see `adult_target`
    adult_target: float = 0.0  # 0: adults are not used; else their (capped) target age
    adult_own_age: bool = False  # adults are used with their own ages as targets, up to V - 1 (for a
    # network whose range covers adults, such as the residual one: V 81)
    balance: bool = False  # sample every age equally often
    adult_weight: float = 1.0  # with `balance`, adults are drawn as often as this many ages
    balance_people: bool = False  # with `balance`, within each age (and among the adults) every sex, and
    # among the adults every ethnicity, drawn as often: the flag must not follow who someone is
    young_ethnicity: bool = False  # with `balance_people`, every ethnicity also drawn as often among the
    # minors and among the 18-25s, each age keeping its share (`even_young_ethnicities`)
    scene_margin: float = 0.0  # share of faces whose frame beyond the source photo (the build's
    # repeated edge pixels) is filled from a face-free picture, first, before the other changes (`in_scene`)
    augment: bool = False  # flips, shifts, zooms, light and colour changes
    robust: float = 0.0  # share of faces made to look like seized photos: grayscale, sepia, low
    # resolution, heavy JPEG, blur, noise (one of them), and apart the same share turned up to 30
    # degrees, off-centre and cut by the frame (`seized_look`)
    grayscale: bool = False  # every face shown as a black-and-white photo gives it (luma in all
    # three channels, last, after colour changes and occluders): the specialist a model routes such faces to
    occluders: float = 0.0  # share of faces given a random black occluder
    varied_occluders: bool = False  # the occluders are also skin- or hair-coloured patches, or the
    # eyes blurred, pixelated or behind dark glasses (`_varied_occluders`)
    teacher: str = ""  # a trained checkpoint whose estimate on each photo's unbarred face is
    teacher_weight: float = 0.5  # blended by this weight into the target of both twins (below)
    teacher_centred: bool = False  # first take off the teacher's mean error at each target age
    teacher_young_only: bool = False  # the blend only for faces within the range; adults keep their
    # target: a model's own estimates anchor the young while its view of adults is retaught
    teacher_adults_only: bool = False  # the blend only for adults; the young keep their labels: a
    # network's own view of adults kept (learning without forgetting) while it learns the young
    boundary_weight: float = 0.0  # weight of a hinge that pushes minors' estimates below the flag
    boundary_margin: float = 1.0  # threshold and adults' above it by this many years (`boundary_loss`)
    mirror_consistency: float = 0.0  # weight of |estimate - estimate of the mirrored face|; each
    # batch then also runs mirrored (twice the time): `batch_loss`
    per_age: int = 0  # use at most this many training-split photos per age; 0 = all
    val_fraction: float = 0.2  # 0: fit on every training photo and keep the last epoch (a refit
    # of a recipe already chosen on validation; the test split still judges it)
    val_seed: int = 0  # which photos validate: fixed apart from `seed`, so that models of several
    # seeds share their validation faces (an ensemble is then measured on faces none has fit)
    seed: int = 0
    patience: int = 0  # stop after this many epochs without a better validation MAE; 0 = never
    minor_recall: float = 0.0  # calibrate the minor flag to this recall on validation; 0 = 17.5

    def __post_init__(self) -> None:
        """Refuse options that contradict each other before any data is loaded."""
        if self.val_fraction == 0 and self.minor_recall:
            raise ValueError("minor_recall calibrates on validation photos: it needs val_fraction > 0")
        if self.teacher_young_only and self.teacher_adults_only:
            raise ValueError("teacher_young_only and teacher_adults_only exclude each other")
        if self.loss == "dldl" and self.mirror_consistency:
            raise ValueError("the dldl loss and mirror_consistency cannot be combined")

    def resume_key(self) -> dict:
        """The options that decide the weights (the flag's calibration comes after them)."""
        return {k: v for k, v in asdict(self).items() if k != "minor_recall"}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass(frozen=True)
class DexConfig:
    """A DEX training run: the input size the CPU allows, and a short schedule."""

    image_size: int = 32
    classes: int = 26  # ages 0..25
    fc_width: int = 4096  # VGG-16's fully connected layers
    epochs: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    variant: str = "org+ocl"
    per_age: int = 0
    seed: int = 0

"""Fine-tuning SSR-Net for minors and young adults (the paper's §3.3), and what beats it.

The paper's recipe: start from the IMDB or MORPH weights, ages [0, 25], up to 90 epochs, 80 %
of the training split to fit and 20 % to validate, keep the epoch with the best validation MAE.
Everything that changes the result is a field of `TrainConfig`, recorded in the model card:
the output range V, the loss, age-balanced sampling, augmentation (including occluders of other
shapes than the paper's bar), the schedule, and what to do with adults older than the range.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import metrics
from .datasets import UNKNOWN, FaceSet, load_faces, photo_demographics
from .models import AveragedSSRNet, ModelCard, SSRNet, SSRNetConfig, load_checkpoint, load_pretrained_network, member_cards, predict_ages, save_checkpoint

INITS = ("imdb", "morph2", "wiki", "megaface_asian", "scratch")


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
    loss: str = "l1"  # l1 | smooth_l1
    V: int = 26  # output range [0, V)
    max_age: int = 25  # ages above are adults: see `adult_target`
    adult_target: float = 0.0  # 0: adults are not used; else their (capped) target age
    balance: bool = False  # sample every age equally often
    adult_weight: float = 1.0  # with `balance`, adults are drawn as often as this many ages
    balance_people: bool = False  # with `balance`, within each age (and among the adults) every sex, and
    # among the adults every ethnicity, drawn as often: the flag must not follow who someone is
    augment: bool = False  # flips, shifts, zooms, light and colour changes
    robust: float = 0.0  # share of faces made to look like seized photos: grayscale, sepia, low
    # resolution, heavy JPEG, blur, noise (one of them), and apart the same share turned up to 30
    # degrees, off-centre and cut by the frame (`seized_look`)
    occluders: float = 0.0  # share of faces given a random black occluder
    varied_occluders: bool = False  # the occluders are also skin- or hair-coloured patches, or the
    # eyes blurred, pixelated or behind dark glasses (`_varied_occluders`)
    teacher: str = ""  # a trained checkpoint whose estimate on each photo's unbarred face is
    teacher_weight: float = 0.5  # blended by this weight into the target of both twins (below)
    teacher_centred: bool = False  # first take off the teacher's mean error at each target age
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


# ---------------------------------------------------------------------------------------------
# Data: the training split, its validation part, targets


def validation_mask(ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the faces of the validation part: a seeded choice of photos, so a photo's
    twin goes with it (§3.3: 80 % fit, 20 % validate)."""
    unique = np.unique(ids)
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(unique, size=int(round(len(unique) * fraction)), replace=False).tolist())
    return np.array([i in chosen for i in ids])


def targets(ages: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """Training targets: ages in range as they are, adults at `adult_target`."""
    return np.where(ages > cfg.max_age, cfg.adult_target, ages).astype(np.float32)


def teacher_targets(fit: FaceSet, plain: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """The targets blended with a teacher's estimates on the unbarred twin of every face.

    Why: UTKFace's ages are noisy and a barred face hides what the teacher still sees, so a
    barred face learns from what its open-eyed twin shows (learning with privileged
    information), and every face from a smoothed label instead of a noisy one."""
    teacher, _ = load_checkpoint(Path(cfg.teacher))
    org_index = {i: k for k, (i, v) in enumerate(zip(fit.ids, fit.variants)) if v == "org"}
    twin = np.array([org_index.get(i, k) for k, i in enumerate(fit.ids)])
    estimates = predict_ages(teacher, fit.faces[twin], 512, cfg.V - 1)
    if cfg.teacher_centred:
        estimates = estimates - mean_error_per_target(estimates, plain)
    return ((1 - cfg.teacher_weight) * plain + cfg.teacher_weight * estimates).astype(np.float32)


def mean_error_per_target(estimates: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """For each face, the teacher's mean error over all faces of its (rounded) target. Why: a
    teacher regresses to the middle ages, even on the photos it fit, estimating the oldest too
    young and the youngest too old; taken off, the blend keeps what the teacher sees in each
    photo without pulling the targets at both ends of the range inward."""
    keys = np.rint(plain).astype(int)
    bias = np.zeros_like(estimates)
    for key in np.unique(keys):
        same = keys == key
        bias[same] = np.mean(estimates[same] - plain[same])
    return bias


def training_faces(data_dir: Path, cfg: TrainConfig) -> FaceSet:
    """The training split in the chosen variant; adults only if they have a target."""
    faces = load_faces(data_dir, "train", cfg.variant)
    if cfg.per_age:
        faces = faces.cap_per_age(cfg.per_age, cfg.seed)
    if not cfg.adult_target:
        faces = faces.subset(faces.ages <= cfg.max_age)
    return faces


def fit_and_validation(data_dir: Path, cfg: TrainConfig) -> tuple[FaceSet, FaceSet]:
    """The training split's faces cut into the part that fits and the part that validates
    (none with `val_fraction` 0)."""
    data = training_faces(data_dir, cfg)
    mask = validation_mask(data.ids, cfg.val_fraction, cfg.val_seed)
    return data.subset(~mask), data.subset(mask)


def sample_weights(ages: np.ndarray, cfg: TrainConfig, people: np.ndarray | None = None) -> np.ndarray:
    """Per-face sampling weights: every age equally often when balancing, adults as
    `adult_weight` ages (most faces in a seized collection are adults: they must not drift young);
    with `balance_people` and `people` ((sex, ethnicity) per face), each age's weight shared
    equally among its sexes, and the adults' among their (sex, ethnicity) groups."""
    if not cfg.balance:
        return np.ones(len(ages))
    adult = ages > cfg.max_age
    keys = np.where(adult, cfg.max_age + 1, np.rint(ages)).astype(int).astype(str)
    age_weight = np.where(adult, cfg.adult_weight, 1.0)
    if cfg.balance_people and people is not None:
        sex, ethnicity = np.asarray(people)[:, 0], np.asarray(people)[:, 1]
        groups = np.char.add(np.char.add(keys, "|" + sex), np.where(adult, "|" + ethnicity, ""))
        per_age = Counter(age for age, _ in set(zip(keys.tolist(), groups.tolist())))  # groups within each age
        age_weight = age_weight / np.array([per_age[age] for age in keys.tolist()])
        keys = groups
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return age_weight / counts[inverse]


# ---------------------------------------------------------------------------------------------
# Augmentation on uint8 batches, in torch (no torchvision)


def augment(batch: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Float NCHW 0..255 in, the same out: random flip, shift, zoom, small turn, brightness,
    contrast and colour balance, and (with `occluders`) a random black rectangle."""
    n = batch.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    if cfg.augment:
        angle = (u(n) - 0.5) * math.radians(20)
        scale = 1 + (u(n) - 0.5) * 0.2
        flip = torch.where(u(n) < 0.5, -1.0, 1.0)
        shift = (u(n, 2) - 0.5) * 0.16
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
        grid = nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
        batch = nn.functional.grid_sample(batch, grid, padding_mode="border", align_corners=False)
        contrast = 1 + (u(n, 1, 1, 1) - 0.5) * 0.5
        brightness = (u(n, 1, 1, 1) - 0.5) * 50
        colour = 1 + (u(n, 3, 1, 1) - 0.5) * 0.16
        mean = batch.mean(dim=(1, 2, 3), keepdim=True)
        batch = ((batch - mean) * contrast + mean + brightness) * colour
    if cfg.robust:
        batch = seized_look(batch, cfg.robust, generator)
    if cfg.occluders:
        batch = (_varied_occluders if cfg.varied_occluders else _random_occluders)(batch, cfg.occluders, generator)
    return batch.clamp(0, 255)


def seized_look(batch: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """A `share` of the faces degraded as seized photos are (one of grayscale, sepia, low
    resolution, heavy JPEG, blur, noise), and apart a `share` turned by up to 30 degrees,
    shifted by up to a quarter and zoomed, the frame's edge repeated where the face leaves it.
    Why: the model has seen only UTKFace's aligned colour chips; a collection holds anything."""
    n = batch.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    kind = torch.randint(0, 6, (n,), generator=generator)
    hit = u(n) < share
    out = batch.clone()
    grey = batch.mean(dim=1, keepdim=True).expand_as(batch)
    out = torch.where((hit & (kind == 0)).view(n, 1, 1, 1), grey, out)
    sepia = torch.einsum("ij,njhw->nihw", _SEPIA, batch)
    out = torch.where((hit & (kind == 1)).view(n, 1, 1, 1), sepia, out)
    for k in torch.nonzero(hit & (kind == 2)).flatten().tolist():  # a face of 12-32 px, enlarged
        side = int(12 + 20 * u(1))
        small = nn.functional.interpolate(batch[k : k + 1], size=(side, side), mode="area")
        out[k] = nn.functional.interpolate(small, size=batch.shape[2:], mode="bilinear", align_corners=False)[0]
    for k in torch.nonzero(hit & (kind == 3)).flatten().tolist():
        out[k] = _jpeg(batch[k], int(10 + 40 * u(1)))
    blurred = nn.functional.avg_pool2d(nn.functional.pad(batch, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    out = torch.where((hit & (kind == 4)).view(n, 1, 1, 1), blurred, out)
    noisy = batch + torch.randn(batch.shape, generator=generator) * (4 + 12 * u(n, 1, 1, 1))
    out = torch.where((hit & (kind == 5)).view(n, 1, 1, 1), noisy, out)
    turn = u(n) < share
    angle = (u(n) - 0.5) * math.radians(60) * turn
    scale = 1 + (u(n) - 0.5) * 0.4 * turn
    shift = (u(n, 2) - 0.5) * 0.5 * turn.view(n, 1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = nn.functional.affine_grid(theta, list(out.shape), align_corners=False)
    return nn.functional.grid_sample(out, grid, padding_mode="border", align_corners=False)


_SEPIA = torch.tensor([[0.131, 0.534, 0.272], [0.168, 0.686, 0.349], [0.189, 0.769, 0.393]])  # BGR -> BGR


def _jpeg(face: torch.Tensor, quality: int) -> torch.Tensor:
    """One CHW float face through a JPEG encoder at this quality and back."""
    image = face.clamp(0, 255).byte().permute(1, 2, 0).contiguous().numpy()
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return torch.from_numpy(cv2.imdecode(data, cv2.IMREAD_COLOR)).permute(2, 0, 1).float() if ok else face


def _random_occluders(batch: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """Black rectangles of random size and place on a share of the faces (bars elsewhere than
    the eyes, masks, hands): the model must not rely on any one region."""
    n, _, h, w = batch.shape
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    hit = u(n) < share
    bw, bh = (0.3 + 0.7 * u(n)) * w, (0.1 + 0.3 * u(n)) * h
    x0, y0 = u(n) * (w - bw), u(n) * (h - bh)
    return batch.masked_fill(_inside(x0, y0, bw, bh, hit, h, w), 0.0)


def _inside(x0: torch.Tensor, y0: torch.Tensor, bw: torch.Tensor, bh: torch.Tensor, hit: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, 1, H, W): the pixels inside each face's rectangle, for the faces hit."""
    n = len(hit)
    xs, ys = torch.arange(w).view(1, 1, w), torch.arange(h).view(1, h, 1)
    inside = (xs >= x0.view(n, 1, 1)) & (xs < (x0 + bw).view(n, 1, 1)) & (ys >= y0.view(n, 1, 1)) & (ys < (y0 + bh).view(n, 1, 1))
    return (inside & hit.view(n, 1, 1)).unsqueeze(1)


def _varied_occluders(batch: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """On a share of the faces, one occluder: a black block (as `_random_occluders`), a flat
    skin- or hair-coloured patch (a hand, hair), or the band of the eyes blurred, pixelated or
    darkened (dark glasses): eyes are hidden by more than a black bar."""
    n, _, h, w = batch.shape
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    hit, kind = u(n) < share, torch.randint(0, 3, (n,), generator=generator)
    eyes = kind == 2  # the framed face's eyes lie about 0.3-0.5 down its frame
    bw = torch.where(eyes, torch.full((n,), 0.8 * w), (0.3 + 0.7 * u(n)) * w)
    bh = torch.where(eyes, torch.full((n,), 0.18 * h), (0.1 + 0.3 * u(n)) * h)
    x0 = torch.where(eyes, torch.full((n,), 0.1 * w), u(n) * (w - bw))
    y0 = torch.where(eyes, (0.3 + 0.08 * u(n)) * h, u(n) * (h - bh))
    colour = torch.where((kind == 1).view(n, 1), 40 + 180 * u(n, 1) * torch.tensor([[0.55, 0.7, 1.0]]), torch.zeros(n, 3))
    pixelated = nn.functional.interpolate(nn.functional.avg_pool2d(batch, 8), size=(h, w), mode="nearest")
    blurred = nn.functional.avg_pool2d(nn.functional.pad(batch, (3, 3, 3, 3), mode="replicate"), 7, stride=1)
    eye_cover = torch.stack([pixelated, blurred, batch * 0.15])[torch.randint(0, 3, (n,), generator=generator), torch.arange(n)]
    hidden = torch.where(eyes.view(n, 1, 1, 1), eye_cover, colour.view(n, 3, 1, 1).expand_as(batch))
    return torch.where(_inside(x0, y0, bw, bh, hit, h, w), hidden, batch)


# ---------------------------------------------------------------------------------------------
# The loop


def initial_network(cfg: TrainConfig) -> SSRNet:
    """SSR-Net with the chosen start: original weights, a checkpoint (one network of it, if it
    is an ensemble: a shipped default's members have no checkpoints of their own), or random."""
    arch = SSRNetConfig(V=cfg.V)
    if cfg.init == "scratch":
        return SSRNet(arch)
    if cfg.init in INITS:
        source = load_pretrained_network(cfg.init)
    else:
        source, _ = load_checkpoint(Path(cfg.init))
        if isinstance(source, AveragedSSRNet):
            if not 0 <= cfg.init_member < len(source.members):
                raise ValueError(f"{cfg.init} averages {len(source.members)} networks: init_member {cfg.init_member} is not one of them")
            source = source.members[cfg.init_member]
    net = SSRNet(arch)
    net.load_state_dict(source.state_dict())
    return net


def _loss(cfg: TrainConfig) -> nn.Module:
    return {"l1": nn.L1Loss(), "smooth_l1": nn.SmoothL1Loss(beta=2.0)}[cfg.loss]


def boundary_loss(pred: torch.Tensor, ages: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """A hinge on the wrong side of the minor flag's threshold: zero for a minor estimated at
    least `boundary_margin` years below it or an 18+ face as far above, linear beyond. Why: the
    L1 loss weighs a 16-year-old estimated 18.5 no more than one estimated 13.5, though only the
    first is missed by the flag; the hinge spends the network's capacity on that boundary. It
    reads the photo's own label, not the teacher's blend: the side of 18 is what is asked."""
    side = torch.where(ages < metrics.MINOR_LIMIT, -1.0, 1.0)
    return torch.relu(cfg.boundary_margin - side * (pred - metrics.MINOR_BELOW)).mean()


def batch_loss(net: nn.Module, batch: torch.Tensor, target: torch.Tensor, ages: torch.Tensor, cfg: TrainConfig, loss_fn: nn.Module) -> torch.Tensor:
    """One batch's loss: the targets', the boundary hinge's if asked, and with `mirror_consistency`
    the mean gap between each face's estimate and its mirror image's. Why the last: averaging a
    face's two views (`--mirror`) buys an ensemble most of its edge but costs a second pass; a
    network whose one view already agrees with the other might keep some of it in one pass (tried
    once, session 12: it did not; see the training log)."""
    if cfg.mirror_consistency:
        pred, mirrored = net(torch.cat([batch, batch.flip(3)]).contiguous(memory_format=torch.channels_last)).chunk(2)
        loss = (loss_fn(pred, target) + loss_fn(mirrored, target)) / 2 + cfg.mirror_consistency * (pred - mirrored).abs().mean()
    else:
        pred = net(batch.contiguous(memory_format=torch.channels_last))
        loss = loss_fn(pred, target)
    if cfg.boundary_weight:
        loss = loss + cfg.boundary_weight * boundary_loss(pred, ages, cfg)
    return loss


def _lr_at(epoch: int, cfg: TrainConfig) -> float:
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
    return cfg.lr


def _scores(ages: np.ndarray, pred: np.ndarray, cfg: TrainConfig) -> dict:
    """Validation MAE on ages in range (the model selection criterion), the age-averaged MAE,
    the minors' recall at 85 % specificity on 18-25 year olds, with adults' share called minors
    where adults are trained."""
    pred = np.minimum(pred, np.float32(cfg.max_age))
    young = ages <= cfg.max_age
    out = {"val_mae": metrics.mae(ages[young], pred[young]), "val_mae_age_averaged": metrics.age_averaged_mae(ages[young], pred[young]),
           **{f"val_{k}": v for k, v in metrics.recall_at_specificity(ages, pred).items()}}
    if (~young).any():
        out["val_adults_called_minors"] = float(np.mean(pred[~young] < metrics.MINOR_BELOW))
    return out


def _validation_score(net: nn.Module, val: FaceSet, cfg: TrainConfig) -> dict:
    return _scores(val.ages, predict_ages(net, val.faces, 512), cfg)


def _shared_validation(cards: list[ModelCard]) -> TrainConfig:
    """The training options that name the validation photos several models all left out:
    refused unless they were trained on the same data set with the same split."""
    cards = [m for c in cards for m in member_cards(c)]
    keys = {(c.data.get("dataset"), c.training.get("val_seed", 0), c.training.get("val_fraction")) for c in cards}
    if len(keys) != 1 or None in (key := keys.pop()):
        raise ValueError("the members were not validated on the same photos (data set, val_seed, val_fraction differ)")
    if key[2] == 0:
        raise ValueError("the members were fit on every training photo: no validation photos are left to measure them on")
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig.from_dict({k: v for k, v in cards[0].training.items() if k in known})


def validate_combined(net: nn.Module, member_cards: list[ModelCard], data_dir: Path) -> dict:
    """The validation measures of an ensemble on the photos its members all left out."""
    cfg = _shared_validation(member_cards)
    return _validation_score(net, fit_and_validation(Path(data_dir), cfg)[1], cfg)


def choose_members(paths: list[Path], data_dir: Path, most: int, mirror: bool) -> tuple[list[Path], dict]:
    """Of the trained checkpoints given, the ensemble of at most `most` networks with the lowest
    MAE averaged over ages on their shared validation photos, and its scores. A checkpoint that
    is itself an ensemble (an earlier default model) is a candidate as a whole and counts its
    networks. The choice never sees the test split, so the test numbers of the chosen ensemble
    stay honest; on a tie the ensemble of fewer networks wins (it is faster)."""
    if most < 1:
        raise ValueError(f"the largest ensemble size must be 1 or more, got {most}")
    loaded = [load_checkpoint(Path(p)) for p in paths]
    cfg = _shared_validation([card for _, card in loaded])
    val = fit_and_validation(Path(data_dir), cfg)[1]
    views = [val.faces, np.ascontiguousarray(val.faces[:, :, ::-1])] if mirror else [val.faces]
    # an ensemble averages every member on every view: keep each checkpoint's sum and its networks
    sums, networks = [], []
    for net, _ in loaded:
        members = list(net.members) if isinstance(net, AveragedSSRNet) else [net]
        sums.append(sum(predict_ages(m, v, 512) for m in members for v in views))
        networks.append(len(members))
    subsets = [s for size in range(1, min(most, len(paths)) + 1) for s in itertools.combinations(range(len(paths)), size)
               if sum(networks[i] for i in s) <= most]
    if not subsets:
        raise ValueError(f"every model given averages more than {most} networks")
    best: tuple[tuple[int, ...], dict] | None = None
    for subset in sorted(subsets, key=lambda s: sum(networks[i] for i in s)):
        pred = sum(sums[i] for i in subset) / (sum(networks[i] for i in subset) * len(views))
        score = _scores(val.ages, pred, cfg)
        if best is None or score["val_mae_age_averaged"] < best[1]["val_mae_age_averaged"]:
            best = (subset, score)
    return [Path(paths[i]) for i in best[0]], best[1]


def train(data_dir: Path, out_dir: Path, cfg: TrainConfig, progress: bool = True) -> dict:
    """Train (or resume) in `out_dir`; writes model.safetensors + model.json, history.json,
    curves.png. Returns the model card's dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    fit, val = fit_and_validation(Path(data_dir), cfg)
    fit_targets = targets(fit.ages, cfg)
    fit_targets = torch.from_numpy(teacher_targets(fit, fit_targets, cfg) if cfg.teacher else fit_targets)
    fit_faces = torch.from_numpy(fit.faces).permute(0, 3, 1, 2)  # uint8 NCHW view of NHWC memory
    fit_ages = torch.from_numpy(fit.ages)
    people = None
    if cfg.balance_people:
        known = photo_demographics(Path(data_dir))
        people = np.array([known.get(i, (UNKNOWN, UNKNOWN)) for i in fit.ids.tolist()])
    weights = torch.from_numpy(sample_weights(fit.ages, cfg, people))
    net = initial_network(cfg).to(memory_format=torch.channels_last)  # about 2x faster on CPU
    optimiser = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    state = {"epoch": 0, "history": [], "best": None}
    resume = out_dir / "resume.pt"
    if resume.is_file():
        saved = torch.load(resume, weights_only=True)
        if saved["config"] == cfg.resume_key():
            net.load_state_dict(saved["net"])
            optimiser.load_state_dict(saved["optimiser"])
            generator.set_state(saved["generator"])
            state = saved["state"]
    loss_fn = _loss(cfg)
    started = time.time()
    epochs = tqdm(range(state["epoch"], cfg.epochs), initial=state["epoch"], total=cfg.epochs, desc="epochs", disable=not progress)
    for epoch in epochs:
        for group in optimiser.param_groups:
            group["lr"] = _lr_at(epoch, cfg)
        net.train()
        order = torch.multinomial(weights, len(weights), replacement=True, generator=generator) if cfg.balance else torch.randperm(len(weights), generator=generator)
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            if len(index) < 2:
                continue
            batch = augment(fit_faces[index].float(), cfg, generator)
            loss = batch_loss(net, batch, fit_targets[index], fit_ages[index], cfg, loss_fn)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(index)
        scores = _validation_score(net, val, cfg) if len(val) else {}
        record = {"epoch": epoch + 1, "train_loss": total / len(order), **scores, "lr": _lr_at(epoch, cfg)}
        state["history"].append(record)
        if state["best"] is None or not scores or record["val_mae"] < state["best"]["val_mae"]:
            state["best"] = record  # with no validation photos, the last epoch
            torch.save(net.state_dict(), out_dir / "best.pt")
        state["epoch"] = epoch + 1
        torch.save({"config": cfg.resume_key(), "net": net.state_dict(), "optimiser": optimiser.state_dict(),
                    "generator": generator.get_state(), "state": state}, resume)
        shown = {"val_mae": f"{record['val_mae']:.2f}"} if scores else {}
        epochs.set_postfix(loss=f"{record['train_loss']:.2f}", **shown, best=state["best"]["epoch"])
        if cfg.patience and epoch + 1 - state["best"]["epoch"] >= cfg.patience:
            break
    net.load_state_dict(torch.load(out_dir / "best.pt", weights_only=True))
    card = _card(data_dir, cfg, state, len(fit), len(val), time.time() - started)
    if cfg.minor_recall:
        card.minor_below = metrics.calibrate_minor_threshold(val.ages, predict_ages(net, val.faces, 512, cfg.max_age), cfg.minor_recall)
    save_checkpoint(net, card, out_dir / "model")
    (out_dir / "history.json").write_text(json.dumps(state["history"], indent=1) + "\n")
    plot_curves(state["history"], out_dir / "curves.png")
    return card.to_dict()


def _card(data_dir: Path, cfg: TrainConfig, state: dict, n_fit: int, n_val: int, seconds: float) -> ModelCard:
    summary_path = Path(data_dir) / "dataset.json"
    dataset = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    from .config import Framing

    framing = Framing.from_dict(dataset["config"]["framing"]) if dataset else Framing()
    return ModelCard(
        name=Path(data_dir).name + f"-{cfg.variant}-{cfg.init}",
        framing=framing,
        data={"dataset": str(data_dir), "dataset_config": dataset.get("config", {}), "faces_fit": n_fit, "faces_val": n_val},
        training={**asdict(cfg), "epochs_run": state["epoch"], "best_epoch": state["best"]["epoch"], "seconds": round(seconds, 1)},
        metrics={k: v for k, v in state["best"].items() if k.startswith("val_")},
        max_age=cfg.max_age,
        licence="trained from SSR-Net weights (Apache-2.0) on UTKFace (non-commercial research only)",
    )


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss and validation MAE per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [h["train_loss"] for h in history], label="training loss")
    if all("val_mae" in h for h in history):
        ax.plot(epochs, [h["val_mae"] for h in history], label="validation MAE")
    ax.set_xlabel("epoch")
    ax.set_ylabel("years")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

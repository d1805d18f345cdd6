"""Fine-tuning SSR-Net for minors and young adults (the paper's §3.3), and what beats it.

The paper's recipe: start from the IMDB or MORPH weights, ages [0, 25], up to 90 epochs, 80 %
of the training split to fit and 20 % to validate, keep the epoch with the best validation MAE.
Everything that changes the result is a field of `TrainConfig`, recorded in the model card:
the output range V, the loss, age-balanced sampling, augmentation (including occluders of other
shapes than the paper's bar), the schedule, and what to do with adults older than the range.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from minorage import config, groups
from minorage.config import ResNetConfig, SSRNetConfig, TrainConfig
from minorage.faces.detector_training import FACE_FREE_TRAIN, face_free_pictures
from minorage.model.card import ModelCard
from minorage.model.checkpoint import load_checkpoint, load_network, save_checkpoint
from minorage.model.keras import load_pretrained_network
from minorage.model.network import SSRNet, build_network
from minorage.model.runtime import predict_ages
from minorage.paper import metrics
from minorage.paper.augment import augment, in_scene, scene_patches
from minorage.paper.readers import UNKNOWN
from minorage.paper.store import FaceSet, load_faces, photo_demographics, photo_extents

INITS = (*config.PRETRAINED_NAMES, "scratch")  # where a training run starts, besides a checkpoint
SCENE_PATCHES = 4096  # face-free patches a run draws faces' margins from (`scene_margin`)


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
    """Training targets: ages in range as they are, adults at `adult_target` (or their own
    ages, capped at the network's range, with `adult_own_age`)."""
    adults = np.minimum(ages, cfg.V - 1) if cfg.adult_own_age else cfg.adult_target
    return np.where(ages > cfg.max_age, adults, ages).astype(np.float32)


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
    blended = (1 - cfg.teacher_weight) * plain + cfg.teacher_weight * estimates
    adults = fit.ages > cfg.max_age
    if cfg.teacher_young_only:  # adults keep their own target: the teacher's view of them is what is retaught
        blended = np.where(adults, plain, blended)
    if cfg.teacher_adults_only:  # the young learn their labels, the adults keep what the teacher sees
        blended = np.where(adults, blended, plain)
    return blended.astype(np.float32)


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
    if not (cfg.adult_target or cfg.adult_own_age):
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
    weights = age_weight / counts[inverse]
    if cfg.balance_people and cfg.young_ethnicity and people is not None:
        weights = even_young_ethnicities(weights, np.rint(ages), np.asarray(people)[:, 1], ~adult)
    return weights


def even_young_ethnicities(weights: np.ndarray, ages: np.ndarray, ethnicity: np.ndarray, young: np.ndarray,
                           rounds: int = 50) -> np.ndarray:
    """The young faces' weights rescaled so that every known ethnicity is drawn equally often
    among the minors, and again among the 18-25-year-olds, each age keeping its own total (and
    each face its share within its ethnicity and age): few children of one ethnicity in the data
    must not leave the network reading them as others. Alternating the two scalings (iterative
    proportional fitting) approaches both."""
    out = weights.astype(float).copy()
    known = young & (ethnicity != UNKNOWN)
    band = np.where(ages < groups.MINOR_LIMIT, "minor", "18-25")
    cells = np.char.add(np.char.add(band, "|"), ethnicity.astype(str))
    age_values = np.unique(ages[known])
    age_totals = {age: out[known & (ages == age)].sum() for age in age_values}
    for _ in range(rounds):
        for kind in np.unique(band[known]):
            in_band = known & (band == kind)
            names = np.unique(cells[in_band])
            share = out[in_band].sum() / len(names)
            for name in names:
                members = in_band & (cells == name)
                out[members] *= share / out[members].sum()
        for age in age_values:
            members = known & (ages == age)
            out[members] *= age_totals[age] / out[members].sum()
    return out


# ---------------------------------------------------------------------------------------------
# The loop


def initial_network(cfg: TrainConfig) -> tuple[nn.Module, str]:
    """The network training starts from, and the licence of its weights: original SSR-Net
    weights, a checkpoint (of its architecture; one network of it, if it is an ensemble: a
    shipped default's members have no checkpoints of their own), or a random SSR-Net."""
    if cfg.init == "scratch":
        return SSRNet(SSRNetConfig(V=cfg.V)), "trained from scratch"
    if cfg.init in INITS:
        source, licence = load_pretrained_network(cfg.init), "trained from SSR-Net weights (Apache-2.0)"
    else:
        source, card = load_network(Path(cfg.init), cfg.init_member)  # a specialist starts from colour networks too
        licence = card.licence
    if isinstance(source.cfg, ResNetConfig):
        if cfg.V != source.cfg.V:
            raise ValueError(f"{cfg.init} is the residual network, whose range is fixed: V must be {source.cfg.V}, got {cfg.V}")
        arch = source.cfg
    else:
        arch = SSRNetConfig(V=cfg.V)  # SSR-Net's weights do not depend on its range
    if cfg.loss == "dldl" and not hasattr(source, "logits"):
        raise ValueError("the dldl loss needs a network with a softmax over ages: start from the residual network")
    net = build_network(arch)
    net.load_state_dict(source.state_dict())
    return net, licence


def _loss(cfg: TrainConfig) -> nn.Module:
    """The loss on the estimate (with `dldl`, the L1 half of it; `batch_loss` adds the rest)."""
    return {"l1": nn.L1Loss(), "smooth_l1": nn.SmoothL1Loss(beta=2.0), "dldl": nn.L1Loss()}[cfg.loss]


def label_distribution_loss(logits: torch.Tensor, target: torch.Tensor, ages: torch.Tensor, sigma: float) -> torch.Tensor:
    """Cross-entropy of the network's softmax over `ages` against a Gaussian of `sigma` years
    around each target (deep label distribution learning). Why: a confident softmax passes
    almost no gradient to an L1 loss on its expectation (measured: fine-tuning the residual
    network on L1 alone left its validation MAE where it started, 7.9 years, while this loss
    beside it brought it to 3.5 in 150 batches); neighbouring ages share each label's weight,
    as UTKFace's ages are themselves a year or two off."""
    label = torch.softmax(-((ages[None] - target[:, None]) ** 2) / (2 * sigma**2), dim=1)
    return -(label * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def boundary_loss(pred: torch.Tensor, ages: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """A hinge on the wrong side of the minor flag's threshold: zero for a minor estimated at
    least `boundary_margin` years below it or an 18+ face as far above, linear beyond. Why: the
    L1 loss weighs a 16-year-old estimated 18.5 no more than one estimated 13.5, though only the
    first is missed by the flag; the hinge spends the network's capacity on that boundary. It
    reads the photo's own label, not the teacher's blend: the side of 18 is what is asked."""
    side = torch.where(ages < groups.MINOR_LIMIT, -1.0, 1.0)
    return torch.relu(cfg.boundary_margin - side * (pred - groups.MINOR_BELOW)).mean()


def batch_loss(net: nn.Module, batch: torch.Tensor, target: torch.Tensor, ages: torch.Tensor, cfg: TrainConfig, loss_fn: nn.Module) -> torch.Tensor:
    """One batch's loss: the targets', the boundary hinge's if asked, and with `mirror_consistency`
    the mean gap between each face's estimate and its mirror image's. Why the last: averaging a
    face's two views (`--mirror`) buys an ensemble most of its edge but costs a second pass; a
    network whose one view already agrees with the other might keep some of it in one pass (tried
    once, 2026-11-29: it did not; see docs/model-history.md)."""
    if cfg.mirror_consistency:
        pred, mirrored = net(torch.cat([batch, batch.flip(3)]).contiguous(memory_format=torch.channels_last)).chunk(2)
        loss = (loss_fn(pred, target) + loss_fn(mirrored, target)) / 2 + cfg.mirror_consistency * (pred - mirrored).abs().mean()
    elif cfg.loss == "dldl":
        logits = net.logits(batch.contiguous(memory_format=torch.channels_last))
        pred = net.expected_age(logits)
        loss = label_distribution_loss(logits, target, net.ages, cfg.label_sigma) + loss_fn(pred, target)
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


def validation_scores(ages: np.ndarray, pred: np.ndarray, cfg: TrainConfig) -> dict:
    """Validation MAE on ages in range (the model selection criterion), the age-averaged MAE,
    the minors' recall at 85 % specificity on 18-25 year olds, with adults' share called minors
    where adults are trained."""
    pred = np.minimum(pred, np.float32(cfg.max_age))
    young = ages <= cfg.max_age
    out = {"val_mae": metrics.mae(ages[young], pred[young]), "val_mae_age_averaged": metrics.age_averaged_mae(ages[young], pred[young]),
           **{f"val_{k}": v for k, v in metrics.recall_at_specificity(ages, pred).items()}}
    if (~young).any():
        out["val_adults_called_minors"] = float(np.mean(pred[~young] < groups.MINOR_BELOW))
    return out


def validation_score(net: nn.Module, val: FaceSet, cfg: TrainConfig) -> dict:
    return validation_scores(val.ages, predict_ages(net, val.faces, 512), cfg)


def scene_margins(data_dir: Path, fit: FaceSet, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor] | None:
    """With `scene_margin`: where each face's source photo lies in its frame, and the bank of
    face-free patches its margin is drawn from (the detector's training pictures, never the
    ones `evaluate --scenes` pastes into)."""
    if not cfg.scene_margin:
        return None
    patches = scene_patches(face_free_pictures(FACE_FREE_TRAIN), SCENE_PATCHES, fit.faces.shape[1], cfg.seed)
    return torch.from_numpy(photo_extents(data_dir, fit.ids)), patches


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
    scenes = scene_margins(Path(data_dir), fit, cfg)
    net, licence = initial_network(cfg)
    net = net.to(memory_format=torch.channels_last)  # about 2x faster on CPU
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
            batch = fit_faces[index].float()
            if scenes is not None:
                batch = in_scene(batch, scenes[0][index], scenes[1], cfg.scene_margin, generator)
            batch = augment(batch, cfg, generator)
            loss = batch_loss(net, batch, fit_targets[index], fit_ages[index], cfg, loss_fn)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(index)
        scores = validation_score(net, val, cfg) if len(val) else {}
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
    card = _card(data_dir, cfg, state, len(fit), len(val), time.time() - started, licence)
    if cfg.minor_recall:
        card.minor_below = metrics.calibrate_minor_threshold(val.ages, predict_ages(net, val.faces, 512, cfg.max_age), cfg.minor_recall)
    save_checkpoint(net, card, out_dir / "model")
    (out_dir / "history.json").write_text(json.dumps(state["history"], indent=1) + "\n")
    plot_curves(state["history"], out_dir / "curves.png")
    return card.to_dict()


def _card(data_dir: Path, cfg: TrainConfig, state: dict, n_fit: int, n_val: int, seconds: float, licence: str) -> ModelCard:
    summary_path = Path(data_dir) / "dataset.json"
    dataset = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    from minorage.config import Framing

    framing = Framing.from_dict(dataset["config"]["framing"]) if dataset else Framing()
    return ModelCard(
        name=Path(data_dir).name + f"-{cfg.variant}-{cfg.init}",
        framing=framing,
        data={"dataset": str(data_dir), "dataset_config": dataset.get("config", {}), "faces_fit": n_fit, "faces_val": n_val},
        training={**asdict(cfg), "epochs_run": state["epoch"], "best_epoch": state["best"]["epoch"], "seconds": round(seconds, 1)},
        metrics={k: v for k, v in state["best"].items() if k.startswith("val_")},
        max_age=cfg.max_age,
        licence=licence if "UTKFace" in licence else f"{licence} on UTKFace (non-commercial research only)",
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

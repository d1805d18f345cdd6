"""Teaching MTCNN to find eye-barred faces: R-Net and O-Net fine-tuned on occluded copies.

Stock MTCNN loses about half of the faces once their eyes are under a black bar: P-Net still
proposes them, R-Net and O-Net reject them. So P-Net stays stock and R-Net and O-Net are
fine-tuned, from the stock weights, on the usual MTCNN samples (positives, part faces,
negatives with their box and point targets) cut from

- real face photos, as they are and eye-barred (the paper's bar and bars of other sizes,
  angles and positions), whose true box and points come from stock MTCNN on the original;
- face-free pictures shipped in scikit-image's wheel, for negatives (P-Net's own false
  proposals there, the hard ones), and with `negatives` a folder of more, such as animals, whose
  faces the tuned pair must not take for barred human ones;
- with `scenes`, the same photos pasted into those pictures as seized photos hold faces
  (`minorage.faces.wild`): turned, small, grayscale or sepia, blurred, noisy, cut by the edge.

The photos are split by content hash: the held-out fifth is never trained on and is where
recall is measured; the face-free pictures are split by name the same way.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from minorage import config
from minorage.config import DetectorConfig, DetectorTrainingConfig
from minorage.faces.detection import Face, FaceDetector, cut_patches, iou, main_face, normalise, squared, weights_files
from minorage.faces.mtcnn import load_module
from minorage.faces.occlusion import EyeBar, eye_bar, fill_bar, occlude_all
from minorage.faces.wild import DEGRADATIONS, wild_photo

#: scikit-image's face-free sample pictures, split for training negatives and evaluation
FACE_FREE_TRAIN = ("brick.png", "coffee.png", "coins.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg", "moon.png", "page.png", "rocket.jpg", "text.png", "motorcycle_left.png")
FACE_FREE_EVAL = ("cell.png", "chelsea.png", "clock_motion.png", "color.png", "ihc.png", "logo.png", "microaneurysms.png", "motorcycle_right.png", "phantom.png", "retina.jpg", "chessboard_RGB.png")


def is_held_out(path: Path, every: int = 5) -> bool:
    """Stable split by file content, so copies of a photo fall on the same side."""
    return int(hashlib.sha256(path.read_bytes()).hexdigest()[:8], 16) % every == 0


def face_free_pictures(names: tuple[str, ...]) -> list[np.ndarray]:
    """scikit-image's sample pictures as BGR; they ship inside its wheel (nothing is fetched)."""
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    pictures = [cv2.imread(str(folder / name), cv2.IMREAD_COLOR) for name in names]
    missing = [name for name, picture in zip(names, pictures) if picture is None]
    if missing:
        raise FileNotFoundError(f"scikit-image sample pictures missing from {folder}: {', '.join(missing)}")
    return pictures


#: the picture files a folder of face-free pictures is searched for (others, such as drawings in SVG, are passed over)
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def folder_picture_paths(folder: str | Path, held_out: bool, every: int = 5) -> list[Path]:
    """The picture files under a folder on one side of its split by content hash."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"face-free pictures: {root} is not a folder")
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in PICTURE_SUFFIXES and p.is_file())
    return [path for path in found if is_held_out(path, every) == held_out]


def folder_pictures(folder: str | Path, held_out: bool, every: int = 5) -> dict[str, np.ndarray]:
    """The pictures under a folder on one side of its split by content hash, by their path in it,
    as BGR with any transparency laid on mid-grey (stamps and cut-outs are mostly transparent)."""
    root = Path(folder)
    pictures = {}
    for path in folder_picture_paths(root, held_out, every):
        picture = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if picture is None:
            raise ValueError(f"face-free pictures: {path} cannot be read as a picture")
        pictures[str(path.relative_to(root))] = on_grey(picture)
    return pictures


def on_grey(picture: np.ndarray) -> np.ndarray:
    """A grey, BGR or BGRA picture as BGR, its transparent parts mid-grey."""
    if picture.ndim == 2:
        return cv2.cvtColor(picture, cv2.COLOR_GRAY2BGR)
    if picture.shape[2] == 3:
        return picture
    alpha = picture[:, :, 3:].astype(np.float32) / 255.0
    return np.round(picture[:, :, :3] * alpha + 128.0 * (1.0 - alpha)).astype(np.uint8)


def random_bar(face: Face, rng: np.random.Generator) -> EyeBar:
    """A bar unlike the paper's: other heights, widths, angles and a shifted centre."""
    bar = eye_bar(face)
    return EyeBar(
        center=(bar.center[0] + rng.uniform(-0.06, 0.06) * face.width, bar.center[1] + rng.uniform(-0.06, 0.06) * face.height),
        width=face.width * rng.uniform(0.7, 1.15),
        height=face.height * rng.uniform(0.15, 0.4),
        angle=bar.angle + rng.uniform(-12, 12),
    )


@dataclass
class Samples:
    """Training patches for one network size: image, label (1 face, 0 not, -1 part), targets."""

    patches: list[np.ndarray]
    labels: list[np.ndarray]
    boxes: list[np.ndarray]  # box regression targets (N, 4)
    points: list[np.ndarray]  # point targets (N, 10), zero where unknown

    @classmethod
    def empty(cls) -> "Samples":
        return cls([], [], [], [])

    def add(self, rgb: np.ndarray, boxes: np.ndarray, labels: np.ndarray, truth: Face | None, size: int) -> None:
        if not len(boxes):
            return
        self.patches.append(cut_patches(rgb, boxes, size))
        self.labels.append(labels.astype(np.int64))
        wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
        if truth is None:
            self.boxes.append(np.zeros((len(boxes), 4), np.float32))
            self.points.append(np.zeros((len(boxes), 10), np.float32))
            return
        target = (np.array(truth.box)[None] - boxes) / np.concatenate([wh, wh], axis=1)
        rel = (truth.points[None] - boxes[:, None, :2]) / wh[:, None, :]
        self.boxes.append(target.astype(np.float32))
        self.points.append(np.concatenate([rel[:, :, 0], rel[:, :, 1]], axis=1).astype(np.float32))

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "patches": np.concatenate(self.patches),
            "labels": np.concatenate(self.labels),
            "boxes": np.concatenate(self.boxes),
            "points": np.concatenate(self.points),
        }


def face_candidates(proposals: np.ndarray, truth: Face, rng: np.random.Generator, cfg: DetectorTrainingConfig):
    """P-Net's proposals plus jittered truth boxes, labelled by IoU and thinned per kind."""
    side = max(truth.width, truth.height)
    centre = np.array([(truth.box[0] + truth.box[2]) / 2, (truth.box[1] + truth.box[3]) / 2])
    jitter = []
    for _ in range(12):
        s = side * rng.uniform(0.8, 1.25)
        c = centre + rng.uniform(-0.2, 0.2, 2) * side
        jitter.append([c[0] - s / 2, c[1] - s / 2, c[0] + s / 2, c[1] + s / 2])
    boxes = np.concatenate([squared(proposals[:, :4]) if len(proposals) else np.zeros((0, 4)), np.array(jitter)])
    overlap = iou(boxes, np.array(truth.box))
    chosen, labels = [], []
    for label, mask, limit in (
        (1, overlap >= 0.65, cfg.positives_per_face),
        (-1, (overlap >= 0.4) & (overlap < 0.65), cfg.parts_per_face),
        (0, overlap < 0.3, cfg.negatives_per_face),
    ):
        index = np.flatnonzero(mask)
        index = rng.permutation(index)[:limit]
        chosen.append(boxes[index])
        labels.append(np.full(len(index), label))
    return np.concatenate(chosen), np.concatenate(labels)


def build_samples(photos: list[Path], cfg: DetectorTrainingConfig, progress: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """R-Net (24 px) and O-Net (48 px) samples from photos and face-free pictures."""
    rng = np.random.default_rng(cfg.seed)
    stock = FaceDetector(DetectorConfig(weights="stock", crop_padding=0))
    sets = {24: Samples.empty(), 48: Samples.empty()}
    for path in tqdm(photos, desc="samples from photos", disable=not progress):
        image = cv2.imread(str(path))
        pad = int(round(cfg.pad * max(image.shape[:2])))
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        if cfg.rotate and rng.random() < 0.5:
            h, w = padded.shape[:2]
            turn = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-cfg.rotate, cfg.rotate), 1.0)
            padded = cv2.warpAffine(padded, turn, (w, h), borderValue=(0, 0, 0))
        truth = main_face(stock.cascade(padded), padded.shape)
        if truth is None:
            continue
        variants = [padded, occlude_all(padded, [truth])[0]]
        barred = padded.copy()
        fill_bar(barred, random_bar(truth, rng))
        variants.append(barred)
        for variant in variants:
            rgb = cv2.cvtColor(variant, cv2.COLOR_BGR2RGB)
            with torch.inference_mode():
                proposals = stock.propose(rgb)
            boxes, labels = face_candidates(proposals, truth, rng, cfg)
            for size, samples in sets.items():
                samples.add(rgb, boxes, labels, truth, size)
    if cfg.scenes:
        scene_samples(photos, cfg, stock, sets, progress)
    pictures = [(p, cfg.negatives_per_picture) for p in face_free_pictures(FACE_FREE_TRAIN)]
    if cfg.negatives:
        pictures += [(p, cfg.negatives_per_folder_picture) for p in folder_pictures(cfg.negatives, False, cfg.holdout_every).values()]
    for picture, limit in tqdm(pictures, desc="negatives", disable=not progress):
        picture_negatives(picture, limit, stock, rng, sets, cfg)
    return {"rnet": sets[24].arrays(), "onet": sets[48].arrays()}


def picture_negatives(picture: np.ndarray, limit: int, stock: FaceDetector, rng: np.random.Generator,
                      sets: dict[int, Samples], cfg: DetectorTrainingConfig) -> None:
    """Negatives from a face-free picture: up to `limit` of stock P-Net's proposals at each scale
    and mirror image, the windows it wrongly takes for faces."""
    for scale, mirror in ((s, m) for s in cfg.negative_scales for m in (False, True)):
        resized = cv2.resize(picture, None, fx=scale, fy=scale)
        rgb = cv2.cvtColor(resized[:, ::-1] if mirror else resized, cv2.COLOR_BGR2RGB)
        with torch.inference_mode():
            proposals = stock.propose(rgb)
        boxes = rng.permutation(proposals[:, :4])[:limit] if len(proposals) else np.zeros((0, 4))
        for size, samples in sets.items():
            samples.add(rgb, boxes, np.zeros(len(boxes)), None, size)


def scene_samples(photos: list[Path], cfg: DetectorTrainingConfig, stock: FaceDetector, sets: dict[int, Samples],
                  progress: bool) -> None:
    """Samples from each photo and its eye-barred copy pasted into `cfg.scenes` training
    face-free pictures, the degradations and pictures taken in turn; drawn from a generator of
    their own, so the chips' samples stay those of a run without scenes."""
    rng = np.random.default_rng(cfg.seed + 1)
    backgrounds = face_free_pictures(FACE_FREE_TRAIN)
    originals, barred = face_pairs(photos)
    chips = [pair for pair in originals + barred for _ in range(int(cfg.scenes))]
    for k, (chip, truth) in enumerate(tqdm(chips, desc="samples from scenes", disable=not progress)):
        scene = wild_photo(chip, truth, backgrounds[k % len(backgrounds)], DEGRADATIONS[k % len(DEGRADATIONS)], rng)
        rgb = cv2.cvtColor(scene.image, cv2.COLOR_BGR2RGB)
        with torch.inference_mode():
            proposals = stock.propose(rgb)
        boxes, labels = face_candidates(proposals, scene.face, rng, cfg)
        for size, samples in sets.items():
            samples.add(rgb, boxes, labels, scene.face, size)


def mtcnn_loss(outputs, batch, point_weight: float) -> torch.Tensor:
    """MTCNN's multi-task loss: face/not on positives and negatives, box regression on
    positives and parts, points on positives (weights 1, 0.5, point_weight)."""
    logits, reg = outputs[0], outputs[1]
    labels = batch["labels"]
    scored = labels >= 0
    loss = nn.functional.cross_entropy(logits[scored], labels[scored]) if scored.any() else logits.sum() * 0
    boxed = labels != 0
    if boxed.any():
        loss = loss + 0.5 * nn.functional.mse_loss(reg[boxed], batch["boxes"][boxed])
    if point_weight and len(outputs) > 2 and (labels == 1).any():
        loss = loss + point_weight * nn.functional.mse_loss(outputs[2][labels == 1], batch["points"][labels == 1])
    return loss


def fine_tune(net: nn.Module, arrays: dict[str, np.ndarray], cfg: DetectorTrainingConfig, point_weight: float, progress: bool) -> list[float]:
    """Fine-tune one network on its samples; returns the mean loss of each epoch."""
    generator = torch.Generator().manual_seed(cfg.seed)
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    optimiser = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    history = []
    net.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(tensors["labels"]), generator=generator)
        total, batches = 0.0, 0
        bar = tqdm(range(0, len(order), cfg.batch_size), desc=f"{type(net).__name__} epoch {epoch + 1}/{cfg.epochs}", disable=not progress)
        for start in bar:
            index = order[start : start + cfg.batch_size]
            batch = {k: v[index] for k, v in tensors.items()}
            patches = batch["patches"].numpy()
            flip = torch.rand(len(index), generator=generator) < 0.5
            patches = np.where(flip.numpy()[:, None, None, None], patches[:, :, ::-1], patches)
            batch["boxes"] = torch.where(flip[:, None], batch["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1, -1, 1]), batch["boxes"])
            batch["points"] = _flip_points(batch["points"], flip)
            loss = mtcnn_loss(net(torch.from_numpy(normalise(patches))), batch, point_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total, batches = total + loss.item(), batches + 1
            bar.set_postfix(loss=f"{total / batches:.4f}")
        history.append(total / max(batches, 1))
    net.eval()
    return history


def _flip_points(points: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Point targets of horizontally mirrored patches: x -> 1 - x, left and right swapped."""
    xs, ys = points[:, :5], points[:, 5:]
    swap = [1, 0, 2, 4, 3]  # eyes and mouth corners change sides
    flipped = torch.cat([1 - xs[:, swap], ys[:, swap]], dim=1)
    unknown = (points == 0).all(dim=1, keepdim=True)
    return torch.where(flip[:, None] & ~unknown, flipped, points)


def split_photos(cfg: DetectorTrainingConfig) -> tuple[list[Path], list[Path]]:
    """(training photos, held-out photos) of UTKFace by content hash."""
    photos = sorted(config.utkface_dir().glob("*.jpg"))
    held = [p for p in photos if is_held_out(p, cfg.holdout_every)]
    train = [p for p in photos if not is_held_out(p, cfg.holdout_every)]
    rng = np.random.default_rng(cfg.seed)
    return [train[i] for i in sorted(rng.permutation(len(train))[: cfg.photos])], held


def train_detector(out_dir: Path, cfg: DetectorTrainingConfig = DetectorTrainingConfig(), progress: bool = True) -> dict:
    """Fine-tune R-Net and O-Net and write rnet.pt, onet.pt and card.json into `out_dir`."""
    torch.manual_seed(cfg.seed)
    started = time.time()
    train, held = split_photos(cfg)
    samples = build_samples(train, cfg, progress)
    stock = weights_files("stock")
    rnet, onet = load_module("rnet", stock["rnet"]), load_module("onet", stock["onet"])
    history = {
        "rnet": fine_tune(rnet, samples["rnet"], cfg, 0.0, progress),
        "onet": fine_tune(onet, samples["onet"], cfg, 1.0, progress),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(rnet.state_dict(), out_dir / "rnet.pt")
    torch.save(onet.state_dict(), out_dir / "onet.pt")
    card = {
        "what": "MTCNN R-Net and O-Net fine-tuned on eye-barred faces" + (", in chips and in scenes" if cfg.scenes else "") + "; P-Net is stock",
        "init": "facenet-pytorch 2.6.0 MTCNN weights (MIT)",
        "config": asdict(cfg),
        "data": {
            "photos": f"UTKFace ({len(train)} training photos, {len(held)} held out by content hash)",
            "face_free": {"train": list(FACE_FREE_TRAIN), "eval": list(FACE_FREE_EVAL), "source": "scikit-image sample data"},
            "face_free_folder": folder_record(cfg) if cfg.negatives else None,
            "samples": {k: {"total": int(len(v["labels"])), **{name: int((v["labels"] == lab).sum()) for name, lab in (("positive", 1), ("part", -1), ("negative", 0))}} for k, v in samples.items()},
        },
        "loss_per_epoch": history,
        "seconds": round(time.time() - started, 1),
    }
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def folder_record(cfg: DetectorTrainingConfig) -> dict:
    """Which of the folder's pictures gave negatives and which are held out, for the card."""
    def names(held_out: bool) -> list[str]:
        return sorted(str(p.relative_to(cfg.negatives)) for p in folder_picture_paths(cfg.negatives, held_out, cfg.holdout_every))

    return {"folder": cfg.negatives, "train": names(False), "held_out": names(True)}


# ---------------------------------------------------------------------------------------------
# Measuring recall and false detections


def recall_on(detector: FaceDetector, pairs: list[tuple[np.ndarray, Face]], min_iou: float = 0.5) -> tuple[float, int]:
    """(share of true faces found again: a box with IoU >= min_iou, boxes that overlap no true
    face: IoU < 0.3; these photos hold one face each, so those are false detections)."""
    hits = extra = 0
    for image, truth in pairs:
        boxes = np.array([f.box for f in detector.detect(image)]).reshape(-1, 4)
        overlap = iou(boxes, np.array(truth.box)) if len(boxes) else np.zeros(0)
        hits += bool(len(boxes)) and overlap.max() >= min_iou
        extra += int((overlap < 0.3).sum())
    return hits / max(len(pairs), 1), extra


def false_detections(detector: FaceDetector, pictures: list[np.ndarray]) -> tuple[int, int]:
    """(detections, pictures) over face-free pictures at three scales."""
    found = count = 0
    for picture in pictures:
        for scale in (0.5, 1.0, 2.0):
            found += len(detector.detect(cv2.resize(picture, None, fx=scale, fy=scale)))
            count += 1
    return found, count


def face_pairs(photos: list[Path]) -> tuple[list[tuple[np.ndarray, Face]], list[tuple[np.ndarray, Face]]]:
    """(original, truth) and (eye-barred copy, truth) for the photos that stock MTCNN finds
    unoccluded (held-out ones to measure on, training ones for scenes); the truth is that
    detection."""
    stock = FaceDetector(DetectorConfig(weights="stock"))
    originals, barred = [], []
    for path in photos:
        image = cv2.imread(str(path))
        truth = main_face(stock.detect(image), image.shape)
        if truth is not None:
            originals.append((image, truth))
            barred.append((occlude_all(image, [truth])[0], truth))
    return originals, barred


def evaluate_detectors(settings: dict[str, DetectorConfig], photos: list[Path], progress: bool = True,
                       face_free: str = "") -> dict[str, dict]:
    """Recall on originals and eye-barred copies, as chips and pasted into scenes (`wild`: each
    degradation apart), and false detections, per detector setting; with `face_free` a folder of
    pictures (`DetectorTrainingConfig.negatives`), also on its held-out fifth, never trained on."""
    from minorage.faces.wild import recall_by_degradation, wild_set

    originals, barred = face_pairs(photos)
    pictures = face_free_pictures(FACE_FREE_EVAL)
    folder = folder_pictures(face_free, True) if face_free else {}
    scenes = {"original": wild_set(originals, pictures, seed=1), "occluded": wild_set(barred, pictures, seed=1)}
    results = {}
    for name, cfg in tqdm(settings.items(), desc="detectors", disable=not progress):
        detector = FaceDetector(cfg)
        found, count = false_detections(detector, pictures)
        recall_original, extra_original = recall_on(detector, originals)
        recall_occluded, extra_occluded = recall_on(detector, barred)
        wild = {kind: recall_by_degradation(detector, photos) for kind, photos in scenes.items()}
        results[name] = {
            "faces": len(originals),
            "recall_original": round(float(recall_original), 4),
            "recall_occluded": round(float(recall_occluded), 4),
            "recall_in_scenes_original": round(wild["original"]["all"], 4),
            "recall_in_scenes_occluded": round(wild["occluded"]["all"], 4),
            "in_scenes_by_degradation": {kind: {k: round(v, 4) for k, v in by.items() if k != "all"} for kind, by in wild.items()},
            "false_detections_in_face_photos": extra_original + extra_occluded,
            "false_detections_face_free": found,
            "face_free_pictures": count,
        }
        if folder:
            found, count = false_detections(detector, list(folder.values()))
            results[name].update(false_detections_folder=found, folder_pictures=count)
    return results

"""MTCNN face and eye detection (Zhang et al., 2016), the detector of the paper's §3.2.

Three networks in a cascade: P-Net slides over an image pyramid and proposes boxes, R-Net
rejects most of them at 24x24, O-Net scores the rest at 48x48 and places five points (the two
eyes, the nose, the two mouth corners). Each stage regresses its boxes and merges overlapping
ones (non-maximum suppression).

Weights ship in the package: the stock P/R/O-Net are facenet-pytorch 2.6.0's (MIT, in
`minorage/weights/mtcnn/stock/` with their licence); the project's own R/O-Net fine-tuned on
eye-barred faces live in `minorage/weights/mtcnn/` (see `detector_training`). The networks are
defined in PyTorch (`mtcnn`) and run here from their ONNX exports beside the weights
(`minorage.exported`), so that detection never imports PyTorch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from minorage.config import DetectorConfig
from minorage.exported import ExportedNetwork
from minorage.faces.yunet import YuNet


@dataclass(frozen=True)
class Face:
    """One detected face: box (x1, y1, x2, y2) in pixels, O-Net score, five points (x, y).

    Points: eye on the image's left, eye on the image's right, nose, mouth left, mouth right.
    """

    box: tuple[float, float, float, float]
    score: float
    points: np.ndarray = field(repr=False)

    @property
    def eyes(self) -> np.ndarray:
        """(2, 2): the image-left eye, then the image-right eye."""
        return self.points[:2]

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def shifted(self, dx: float, dy: float) -> "Face":
        """The same face in an image whose origin moved by (dx, dy)."""
        x1, y1, x2, y2 = self.box
        return Face((x1 + dx, y1 + dy, x2 + dx, y2 + dy), self.score, self.points + np.array([dx, dy]))

    def to_dict(self) -> dict:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 4),
            "eyes": np.round(self.eyes, 2).tolist(),
            "points": np.round(self.points, 2).tolist(),
        }


# ---------------------------------------------------------------------------------------------
# Weights


def shipped_weights_dir() -> Path:
    """The project's R/O-Net fine-tuned on eye-barred faces (P-Net stays stock)."""
    return Path(__file__).parents[1] / "weights" / "mtcnn"


def stock_weights_dir() -> Path:
    """facenet-pytorch 2.6.0's P/R/O-Net (MIT; licence beside them), shipped in the package."""
    return shipped_weights_dir() / "stock"


def weights_files(weights: str) -> dict[str, Path]:
    """pnet/rnet/onet files for a weights choice; a folder may hold only some of them, the
    stock ones fill the rest."""
    stock = stock_weights_dir()
    folder = {"stock": stock, "occlusion": shipped_weights_dir()}.get(weights, Path(weights))
    if not folder.is_dir():
        raise FileNotFoundError(f"MTCNN weights: {folder} is not a folder (give stock, occlusion or a folder with pnet/rnet/onet.pt)")
    files = {}
    for name in ("pnet", "rnet", "onet"):
        path = folder / f"{name}.pt"
        files[name] = path if path.is_file() else stock / f"{name}.pt"
        if not files[name].is_file():
            raise FileNotFoundError(f"MTCNN weights missing: {files[name]} (the package is incomplete: reinstall minorage)")
    return files


#: One of MTCNN's networks as the cascade calls it: a float NCHW batch in, arrays out (P-Net: face
#: probability, box offsets; R-Net: face logits, offsets; O-Net: logits, offsets, points).
Network = Callable[[np.ndarray], tuple[np.ndarray, ...]]


def load_network(name: str, path: Path) -> Network:
    """One of MTCNN's networks (`pnet`, `rnet` or `onet`) from its weights file: in ONNX Runtime
    where the export beside it is current (`minorage.exported`), else in PyTorch (a folder of
    freshly trained weights)."""
    return ExportedNetwork.of(path) or _torch_network(name, path)


def _torch_network(name: str, path: Path) -> Network:
    from minorage.faces.mtcnn import TorchNetwork, load_module

    return TorchNetwork(load_module(name, path))


#: Weight choices that run several R/O-Net pairs behind one P-Net: the union of their faces
#: (`tuned`: the eye-bar-tuned pair of the config, the shipped `occlusion` unless it names a folder).
UNIONS = {"union": ("stock", "tuned"), "yunet": ("stock", "tuned"), "union+yunet": ("stock", "tuned")}
#: Where each weight choice takes its proposals from: P-Net's pyramid, YuNet (`minorage.yunet`), or both.
PROPOSERS = {"yunet": ("yunet",), "union+yunet": ("pnet", "yunet")}


def pair_choices(weights: str, tuned: str = "occlusion") -> list[str]:
    """The weight choice of each R/O-Net pair a weights choice runs, a union's `tuned` named."""
    return [tuned if w == "tuned" else w for w in UNIONS.get(weights, (weights,))]


def tuned_pair_digest(cfg: DetectorConfig) -> str | None:
    """A short fingerprint of the eye-bar-tuned R/O-Net pair a detector setting runs (None where
    it runs none): a scan case records it, so that a resume with another pair is refused rather
    than mixing two detectors' faces."""
    tuned = [w for w in pair_choices(cfg.weights, cfg.tuned) if w != "stock"]
    if not tuned:
        return None
    files = weights_files(tuned[0])
    return hashlib.sha256(files["rnet"].read_bytes() + files["onet"].read_bytes()).hexdigest()[:16]


def load_cascade(weights: str, tuned: str = "occlusion") -> tuple[Network, list[tuple[Network, Network]]]:
    """P-Net and the R/O-Net pairs a weights choice runs (one pair, or several for a union), each
    network loaded once: a union's pairs share the first choice's P-Net."""
    files = [weights_files(w) for w in pair_choices(weights, tuned)]
    return load_network("pnet", files[0]["pnet"]), [(load_network("rnet", f["rnet"]), load_network("onet", f["onet"])) for f in files]


# ---------------------------------------------------------------------------------------------
# Box arithmetic (boxes are float arrays (N, 4+) of x1, y1, x2, y2[, score])


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, by_min: bool = False) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression; overlap is IoU, or over the smaller box.
    IoU goes to OpenCV's (the same greedy rule, in C++: on P-Net's hundreds of windows per scale
    the loop here took about 4 ms of a 640 px photo's 70); the smaller-box overlap stays here."""
    if not by_min:
        if not len(boxes):
            return np.zeros(0, np.int64)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:4] - boxes[:, :2]], axis=1)
        return np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), np.asarray(scores, np.float64).tolist(), 0.0, threshold), np.int64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        order = rest[w * h / np.maximum(np.minimum(areas[i], areas[rest]), 1e-9) <= threshold]
    return np.array(keep, dtype=np.int64)


def iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each of `boxes` (N, 4) with one box (4,)."""
    w = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    h = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    inter = w * h
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (areas + (box[2] - box[0]) * (box[3] - box[1]) - inter)


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Move each box's corners by offsets given as fractions of its width and height."""
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
    return boxes[:, :4] + offsets * size


def squared(boxes: np.ndarray) -> np.ndarray:
    """Each box made square around its centre (the networks see square patches)."""
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)


def cut_patches(rgb: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """The boxes cut from an image (zeros outside it), resized to size x size, uint8 NHWC."""
    h, w = rgb.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(np.round(boxes[:, :4]).astype(int)):
        if x2 <= x1 or y2 <= y1:
            continue
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if (sx1, sy1, sx2, sy2) == (x1, y1, x2, y2):  # inside the image: no canvas to fill
            out[k] = cv2.resize(rgb[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_AREA)
            continue
        canvas = np.zeros((y2 - y1, x2 - x1, 3), np.uint8)
        if sx2 > sx1 and sy2 > sy1:
            canvas[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = rgb[sy1:sy2, sx1:sx2]
        out[k] = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return out


def normalise(rgb: np.ndarray) -> np.ndarray:
    """uint8/float NHWC RGB -> the networks' input: float32 NCHW, (x - 127.5) / 128."""
    return np.ascontiguousarray((np.asarray(rgb, np.float32).transpose(0, 3, 1, 2) - 127.5) * 0.0078125)


def face_probability(logits: np.ndarray) -> np.ndarray:
    """The softmax's face column of (N, 2) logits."""
    return 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))


# ---------------------------------------------------------------------------------------------
# The cascade


class FaceDetector:
    """MTCNN over a BGR image: `detect(image) -> list[Face]`, best score first."""

    def __init__(self, cfg: DetectorConfig = DetectorConfig()):
        self.cfg = cfg
        self.pnet, self.pairs = load_cascade(cfg.weights, cfg.tuned)
        self.proposers = PROPOSERS.get(cfg.weights, ("pnet",))
        self.yunet = YuNet(cfg.yunet_threshold, scale=cfg.yunet_scale) if "yunet" in self.proposers else None

    def pyramid(self, h: int, w: int) -> list[float]:
        """Scales at which a face of min_face_size pixels fills P-Net's 12x12 window."""
        scale = 12.0 / self.cfg.min_face_size
        scales = []
        while min(h, w) * scale >= 12:
            scales.append(scale)
            scale *= self.cfg.factor
        return scales

    def levels(self, rgb: np.ndarray) -> Iterator[tuple[float, np.ndarray]]:
        """The image pyramid P-Net looks at: (scale, the image resized to it), largest first."""
        h, w = rgb.shape[:2]
        for scale in self.pyramid(h, w):
            yield scale, cv2.resize(rgb, (int(np.ceil(w * scale)), int(np.ceil(h * scale))), interpolation=cv2.INTER_AREA)

    def propose(self, rgb: np.ndarray) -> np.ndarray:
        """Stage 1: P-Net windows above threshold over the pyramid, merged; (N, 5) boxes. Each
        level is area-averaged from the whole image: scaled from the level before instead, the
        resizing takes 5 ms less a 640 px photo, but the detector then found 89 % of the
        eye-barred faces in the benchmark's scenes instead of 94 %."""
        found = []
        for scale, resized in self.levels(rgb):
            prob, reg = self.pnet(normalise(resized[None]))
            prob, reg = prob[0], reg[0]
            ys, xs = np.nonzero(prob >= self.cfg.thresholds[0])
            if not len(ys):
                continue
            # each output cell sees a 12x12 window at stride 2 of the scaled image
            windows = np.stack([xs * 2, ys * 2, xs * 2 + 12, ys * 2 + 12], axis=1) / scale
            boxes = np.concatenate([regress(windows, reg[:, ys, xs].T), prob[ys, xs, None]], axis=1)
            found.append(boxes[nms(boxes, boxes[:, 4], 0.5)])
        if not found:
            return np.zeros((0, 5))
        boxes = np.concatenate(found)
        boxes = boxes[nms(boxes, boxes[:, 4], 0.7)]
        return np.concatenate([squared(boxes), boxes[:, 4:5]], axis=1)

    def refine(self, patches: np.ndarray, boxes: np.ndarray, rnet: Network) -> np.ndarray:
        """Stage 2: R-Net on the boxes' 24x24 patches keeps, regresses and re-squares them."""
        logits, reg = rnet(normalise(patches))
        score = face_probability(logits)
        keep = score > self.cfg.thresholds[1]
        boxes = np.concatenate([regress(boxes[keep], reg[keep]), score[keep, None]], axis=1)
        boxes = boxes[nms(boxes, boxes[:, 4], 0.7)]
        return np.concatenate([squared(boxes), boxes[:, 4:5]], axis=1)

    def output(self, patches: np.ndarray, boxes: np.ndarray, onet: Network) -> list[Face]:
        """Stage 3: O-Net scores the boxes' 48x48 patches, places the points, regresses the final boxes."""
        logits, reg, points = onet(normalise(patches))
        score = face_probability(logits)
        keep = score > self.cfg.thresholds[2]
        boxes, reg, points, score = boxes[keep], reg[keep], points[keep], score[keep]
        size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
        points = boxes[:, None, :2] + np.stack([points[:, :5], points[:, 5:]], axis=2) * size[:, None, :]
        final = regress(boxes, reg)
        kept = nms(final, score, 0.7, by_min=True)
        return [Face(tuple(float(v) for v in final[i]), float(score[i]), points[i]) for i in kept]

    def cascade(self, image: np.ndarray) -> list[Face]:
        """One pass of the three stages over a BGR uint8 image, best score first; with several
        R/O-Net pairs, each on the same proposals (their patches cut once), and a face found by
        more than one kept once."""
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        faces = []
        proposals = self.propose(rgb) if "pnet" in self.proposers else np.zeros((0, 5))
        patches = cut_patches(rgb, proposals, 24)
        for rnet, onet in self.pairs if len(proposals) else []:
            boxes = self.refine(patches, proposals, rnet)
            faces += self.output(cut_patches(rgb, boxes, 48), boxes, onet) if len(boxes) else []
        found = self.yunet.propose(image) if self.yunet else np.zeros((0, 15))
        found = squared(found[np.maximum(found[:, 2] - found[:, 0], found[:, 3] - found[:, 1]) >= self.cfg.min_face_size, :4])
        patches = cut_patches(rgb, found, 48)
        for _, onet in self.pairs if len(found) else []:
            faces += self.output(patches, found, onet)
        return merged(faces) if len(self.pairs) > 1 else faces

    def points_at(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """The five points (N, 5, 2) the first pair's O-Net places in each given box of a BGR
        image: for faces whose box is known already (a data set's stored faces), without
        detecting them again."""
        squares = squared(np.asarray(boxes, float).reshape(-1, 4))
        points = self.pairs[0][1](normalise(cut_patches(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), squares, 48)))[2]
        size = squares[:, 2:4] - squares[:, :2]
        return squares[:, None, :2] + np.stack([points[:, :5], points[:, 5:]], axis=2) * size[:, None, :]

    def detect_padded(self, image: np.ndarray) -> list[Face]:
        """The cascade on the image inside a black border of `crop_padding` of its side: on
        tight face crops MTCNN otherwise misses faces and its eye points drift upwards."""
        pad = int(round(self.cfg.crop_padding * max(image.shape[:2])))
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        return [face.shifted(-pad, -pad) for face in self.cascade(padded)]

    def detect(self, image: np.ndarray) -> list[Face]:
        """Every face in a BGR uint8 image, best score first. Where no face is found, or one
        touches the image's edge (a close-up or a face crop), the padded detection decides."""
        faces = self.cascade(image)
        if self.cfg.crop_padding > 0 and (not faces or any(touches_edge(f, image.shape) for f in faces)):
            return self.detect_padded(image)
        return faces


def face_at(image: np.ndarray, box: tuple[float, float, float, float], detector: FaceDetector, min_iou: float = 0.3) -> Face | None:
    """The face `detector` finds in a BGR image that is the one at `box` (the best overlap, if its
    IoU is at least `min_iou`), or None where it finds no such face."""
    faces = detector.detect(image)
    if not faces:
        return None
    overlap = iou(np.array([f.box for f in faces]), np.asarray(box, float))
    best = int(np.argmax(overlap))
    return faces[best] if overlap[best] >= min_iou else None


def merged(faces: list[Face], overlap: float = 0.7) -> list[Face]:
    """Faces found by several stage pairs, each kept once (its best-scoring detection), best first."""
    if len(faces) < 2:
        return faces
    boxes = np.array([f.box for f in faces])
    return [faces[i] for i in nms(boxes, np.array([f.score for f in faces]), overlap, by_min=True)]


def touches_edge(face: Face, image_shape: tuple[int, ...], tolerance: float = 0.05) -> bool:
    """Whether a face box comes within `tolerance` of its size of the image's edge."""
    h, w = image_shape[:2]
    x1, y1, x2, y2 = face.box
    tx, ty = tolerance * face.width, tolerance * face.height
    return x1 < tx or y1 < ty or x2 > w - tx or y2 > h - ty


def main_face(faces: list[Face], image_shape: tuple[int, ...]) -> Face | None:
    """The face a face crop is about: the largest, nearest the centre when sizes are close."""
    if not faces:
        return None
    h, w = image_shape[:2]

    def weight(face: Face) -> float:
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        off_centre = np.hypot((cx - w / 2) / w, (cy - h / 2) / h)
        return face.width * face.height * (1 - off_centre)

    return max(faces, key=weight)

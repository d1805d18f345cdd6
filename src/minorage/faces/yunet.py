"""YuNet (Wu et al., 2023), OpenCV's small face detector, as a second source of face proposals.

Why: MTCNN's P-Net slides a 12x12 window over an image pyramid and, on whole photos, misses
faces that are turned, cut by the edge or eye-barred before the later stages ever see them;
YuNet looks at the whole image once (one 232 KB network) and finds most of those. Its boxes are
shaped differently from MTCNN's, and the age model was trained on faces framed from MTCNN boxes,
so each YuNet face is passed to the O-Nets (`detection`), which place the box and the five
points as they do for their own proposals.

The network runs in ONNX Runtime, which took 4.5 ms of a 640x480 scene on one core where
OpenCV's `FaceDetectorYN` took 11.9 (`benchmarks/detection_choices.py --timing 32`,
`docs/benchmarks.md`); its outputs are decoded here as
`FaceDetectorYN` decodes them, to the same faces. The weights are OpenCV Zoo's
`face_detection_yunet_2023mar.onnx` (MIT), with the input made of any size
(`scripts/yunet_any_size.py`), shipped in `minorage/weights/yunet/` with their licence.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime

from minorage.exported import inference

MODEL_FILE = Path(__file__).parents[1] / "weights" / "yunet" / "face_detection_yunet_2023mar_any_size.onnx"
#: The network's strides: each output map has one cell per `stride` pixels of the input.
STRIDES = (8, 16, 32)


def load_network(path: Path = MODEL_FILE) -> onnxruntime.InferenceSession:
    """The network on one thread: a scan's workers each have a core, and YuNet is a few milliseconds."""
    if not path.is_file():
        raise FileNotFoundError(f"YuNet weights missing: {path} (the package is incomplete: reinstall minorage)")
    return inference(path)


def network_input(image: np.ndarray) -> np.ndarray:
    """A BGR image as the network takes it: float NCHW of raw 0-255 values, zero-padded on the
    right and at the bottom to a multiple of the largest stride."""
    h, w = image.shape[:2]
    step = STRIDES[-1]
    x = np.zeros((1, 3, -(-h // step) * step, -(-w // step) * step), np.float32)
    x[0, :, :h, :w] = image.transpose(2, 0, 1)
    return x


def decode(outputs: dict[str, np.ndarray], width: int, score_threshold: float) -> np.ndarray:
    """(N, 15) rows, x, y, w, h, five points (x, y), score, of every cell scoring at least
    `score_threshold`. Per stride, a cell's score is the geometric mean of its class and
    objectness scores; its box centre and points are offsets in cells from the cell, its size the
    exponent of the prediction, in cells. `width` is the padded input's."""
    rows = []
    for stride in STRIDES:
        cls, obj = (np.clip(outputs[f"{name}_{stride}"][0, :, 0], 0, 1) for name in ("cls", "obj"))
        scores = np.sqrt(cls * obj)
        cells = np.nonzero(scores >= score_threshold)[0]
        if not len(cells):
            continue
        row, col = np.divmod(cells, width // stride)
        box, points = outputs[f"bbox_{stride}"][0, cells], outputs[f"kps_{stride}"][0, cells]
        size = np.exp(box[:, 2:4]) * stride
        centre = (np.stack([col, row], axis=1) + box[:, :2]) * stride
        xy = (points.reshape(-1, 5, 2) + np.stack([col, row], axis=1)[:, None, :]) * stride
        rows.append(np.column_stack([centre - size / 2, size, xy.reshape(-1, 10), scores[cells]]))
    return np.concatenate(rows).astype(np.float64) if rows else np.zeros((0, 15))


class YuNet:
    """`propose(bgr) -> (N, 15)` rows: x1, y1, x2, y2, five points (x, y), score; best first."""

    def __init__(self, score_threshold: float = 0.5, nms_threshold: float = 0.3, max_side: int = 1280, scale: float = 1.0):
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.max_side = max_side
        self.scale = scale
        self.net = load_network()
        self.outputs = [o.name for o in self.net.get_outputs()]

    def propose(self, image: np.ndarray) -> np.ndarray:
        """Faces in a BGR image, looked at scaled by `scale` (where only larger faces are wanted
        a smaller image costs less) and at most `max_side` on its longer side (YuNet's smallest
        face is about 10 px, so little is lost); the rows given in the image's pixels."""
        h, w = image.shape[:2]
        scale = min(self.scale, self.max_side / max(h, w))
        small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) if scale < 1 else image
        x = network_input(small)
        rows = decode(dict(zip(self.outputs, self.net.run(self.outputs, {"input": x}))), x.shape[3], self.score_threshold)
        rows = rows[np.isfinite(rows).all(axis=1)]
        kept = cv2.dnn.NMSBoxes(rows[:, :4].tolist(), rows[:, 14].tolist(), self.score_threshold, self.nms_threshold) if len(rows) else []
        rows = rows[np.asarray(kept, np.int64).reshape(-1)]
        rows = rows[np.argsort(-rows[:, 14], kind="stable")]
        rows[:, 2:4] += rows[:, 0:2]  # x, y, w, h -> x1, y1, x2, y2
        rows[:, :14] /= scale
        return rows

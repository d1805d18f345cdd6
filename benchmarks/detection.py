"""Face detection: time per image at 250, 640 and 1280 px (the networks on one thread each, OpenCV on two), and recall on held-out
UTKFace faces as they are and eye-barred, as chips and pasted into scenes (`minorage.wild`:
varied size, position and angle, grayscale, sepia, low resolution, JPEG, blur, noise, cut by the
edge), stock MTCNN vs the eye-bar-tuned R/O-Nets vs their union on the same proposals vs YuNet's
proposals placed by both O-Nets vs both sources together.

    .venv/bin/python benchmarks/detection.py [--photos N] [--repeats N] [--detectors ...] [--tuned FOLDER] [--yunet-threshold T]
        [--yunet-face-px PX] [--factor F] [--onet-threshold T] [--min-face-size PX] [--face-free FOLDER]

`--tuned FOLDER` adds each union of `--detectors` run with that eye-bar-tuned R/O-Net pair in
place of the shipped one (`minorage detector train --out FOLDER`), side by side (with `--factor`,
also at that step); `--face-free FOLDER` also counts false detections on the held-out fifth of a
folder of face-free pictures, such as animals (`detector train --negatives`);
`--yunet-threshold T` adds each detector that uses YuNet run with that score threshold;
`--yunet-face-px PX` each such detector with YuNet looking at a smaller image (`DetectorConfig.yunet_face_px`);
`--factor F` each detector with that image pyramid step; `--onet-threshold T` each detector with
that O-Net score threshold (with `--factor`, also at that step).

Scenes: a face-free picture (scikit-image's samples) scaled to the size, with two real
UTKFace faces pasted in at 1/4 and 1/8 of its width.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import cv2
import numpy as np
from scene import compose  # benchmarks/scene.py

from minorage import config
from minorage.config import DetectorConfig, DetectorTrainingConfig
from minorage.faces.detection import UNIONS, FaceDetector
from minorage.faces.detector_training import FACE_FREE_EVAL, evaluate_detectors, face_free_pictures, split_photos

DETECTORS = ("stock", "occlusion", "union", "yunet", "union+yunet")


def scenes(size: int, count: int) -> list[np.ndarray]:
    faces = sorted(config.utkface_dir().glob("*.jpg"))[::97][:count * 2]
    backgrounds = face_free_pictures(FACE_FREE_EVAL)
    return [compose(backgrounds[k % len(backgrounds)], (cv2.imread(str(faces[2 * k])), cv2.imread(str(faces[2 * k + 1]))), size)
            for k in range(count)]


def time_per_image(detector: FaceDetector, images: list[np.ndarray], repeats: int) -> float:
    detector.detect(images[0])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        for image in images:
            detector.detect(image)
    return (time.perf_counter() - start) / (repeats * len(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=600, help="held-out photos for recall (0 = all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), help="weight choices to compare (default: all)")
    parser.add_argument("--tuned", help="a trained R/O-Net folder to run in the unions beside the shipped one")
    parser.add_argument("--yunet-threshold", type=float, help="adds each detector of `--detectors` that uses YuNet run with this score threshold")
    parser.add_argument("--yunet-face-px", type=int, help="adds each detector of `--detectors` that uses YuNet with YuNet looking at "
                        "the image scaled so that the smallest face wanted is this many pixels")
    parser.add_argument("--factor", type=float, help="adds each detector of `--detectors` with this image pyramid step")
    parser.add_argument("--onet-threshold", type=float, help="adds each detector of `--detectors` with this O-Net score threshold "
                        "(with --factor, also at that step)")
    parser.add_argument("--face-free", default="", metavar="FOLDER",
                        help="also count false detections on the held-out fifth of this folder of face-free pictures "
                             "(`minorage detector train --negatives`)")
    parser.add_argument("--min-face-size", type=int, default=DetectorConfig().min_face_size,
                        help="every detector's smallest face (default: %(default)s, `predict`'s; `scan`'s is 32)")
    args = parser.parse_args()
    cv2.setNumThreads(2)
    base = DetectorConfig(min_face_size=args.min_face_size)
    settings = {w: replace(base, weights=w) for w in args.detectors}
    if args.tuned:
        settings.update({f"{w} with {args.tuned}": replace(base, weights=w, tuned=args.tuned) for w in args.detectors if w in UNIONS})
        if args.factor is not None:
            settings.update({f"{w} with {args.tuned}, pyramid factor {args.factor}": replace(base, weights=w, tuned=args.tuned, factor=args.factor)
                             for w in args.detectors if w in UNIONS})
    if args.yunet_threshold is not None:
        settings.update({f"{w} at YuNet {args.yunet_threshold}": replace(base, weights=w, yunet_threshold=args.yunet_threshold)
                         for w in args.detectors if "yunet" in w})
    if args.factor is not None:
        settings.update({f"{w}, pyramid factor {args.factor}": replace(base, weights=w, factor=args.factor) for w in args.detectors})
    if args.onet_threshold is not None:
        onet = (*base.thresholds[:2], args.onet_threshold)
        settings.update({f"{w}, O-Net {args.onet_threshold}": replace(base, weights=w, thresholds=onet) for w in args.detectors})
        if args.factor is not None:
            settings.update({f"{w}, pyramid factor {args.factor}, O-Net {args.onet_threshold}": replace(base, weights=w, factor=args.factor, thresholds=onet)
                             for w in args.detectors})
    if args.yunet_face_px is not None:
        settings.update({f"{w}, YuNet's smallest face {args.yunet_face_px} px": replace(base, weights=w, yunet_face_px=args.yunet_face_px)
                         for w in args.detectors if "yunet" in w})
    report = {"threads": "one per network (ONNX Runtime), two for OpenCV's resizing", "ms_per_image": {}}
    for name, cfg in settings.items():
        detector = FaceDetector(cfg)
        for size in (250, 640, 1280):
            ms = 1000 * time_per_image(detector, scenes(size, 8), args.repeats)
            report["ms_per_image"][f"{name}@{size}px"] = round(ms, 1)
            print(f"{name:9s} {size:5d} px: {ms:7.1f} ms/image", flush=True)
    _, held = split_photos(DetectorTrainingConfig())
    held = held[: args.photos] if args.photos else held
    report["recall"] = evaluate_detectors(settings, held, progress=False, face_free=args.face_free)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

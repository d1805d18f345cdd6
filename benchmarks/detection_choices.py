"""Three questions about finding eye-barred faces in whole scenes, measured on the same pasted
scenes as `benchmarks/detection.py` (`minorage.faces.wild`):

- `--proposals`: how many barred faces YuNet's own boxes cover at score thresholds 0.5, 0.3,
  0.2 (before any O-Net), and the boxes it puts on the face-free evaluation pictures; held-out
  photos.
- `--pnet`: the P-Net threshold of the default detector, chosen away from the benchmark (the
  detector's training photos, the training face-free pictures): the rule is the lowest of 0.6,
  0.55, 0.5, 0.45 with no more false detections there than stock MTCNN and no lower normal-face
  recall than at 0.6.
- `--factor F ...`: the default detector with a finer image pyramid (P-Net's step between
  scales): recall of normal and barred faces in scenes, per degradation, false detections on
  the face-free evaluation pictures and milliseconds per 640 px scene on one thread; held-out
  photos, as `benchmarks/detection.py`.

    .venv/bin/python benchmarks/detection_choices.py --proposals [--photos 100]
    .venv/bin/python benchmarks/detection_choices.py --pnet [--photos 120]
    .venv/bin/python benchmarks/detection_choices.py --factor 0.709 0.75 0.8 [--photos 200]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from minorage.config import DetectorConfig, DetectorTrainingConfig
from minorage.faces.detection import FaceDetector, iou
from minorage.faces.detector_training import (
    FACE_FREE_EVAL,
    FACE_FREE_TRAIN,
    evaluate_detectors,
    face_free_pictures,
    false_detections,
    held_out_pairs,
    split_photos,
)
from minorage.faces.wild import recall_by_degradation, wild_set
from minorage.faces.yunet import YuNet


def proposals(photos: int) -> dict:
    _, held = split_photos(DetectorTrainingConfig())
    _, barred = held_out_pairs(held[:photos])
    pictures = face_free_pictures(FACE_FREE_EVAL)
    scenes = wild_set(barred, pictures, seed=1)
    out = {"barred_scenes": len(scenes)}
    for threshold in (0.5, 0.3, 0.2):
        yunet = YuNet(score_threshold=threshold)
        covered = sum(bool(len(rows)) and iou(rows[:, :4], np.array(s.box)).max() >= 0.3 for s in scenes for rows in [yunet.propose(s.image)])
        out[str(threshold)] = {"covered": round(covered / len(scenes), 3), "boxes_on_face_free": sum(len(yunet.propose(p)) for p in pictures)}
    return out


def pnet(photos: int) -> dict:
    train, _ = split_photos(DetectorTrainingConfig())
    originals, barred = held_out_pairs(train[::25][:photos])
    pictures = face_free_pictures(FACE_FREE_TRAIN)
    normal, eye_barred = wild_set(originals, pictures, seed=2), wild_set(barred, pictures, seed=2)
    out = {"faces": len(originals), "stock_false": false_detections(FaceDetector(DetectorConfig(weights="stock")), pictures)}
    for p in (0.6, 0.55, 0.5, 0.45):
        detector = FaceDetector(DetectorConfig(thresholds=(p, 0.7, 0.7)))
        out[str(p)] = {"normal": round(recall_by_degradation(detector, normal)["all"], 4),
                       "barred": round(recall_by_degradation(detector, eye_barred)["all"], 4),
                       "false": false_detections(detector, pictures)}
    return out


def factors(steps: list[float], photos: int) -> dict:
    from detection import scenes, time_per_image  # benchmarks/detection.py

    torch.set_num_threads(1)
    _, held = split_photos(DetectorTrainingConfig())
    settings = {f"factor {f}": DetectorConfig(factor=f) for f in steps}
    out = evaluate_detectors(settings, held[:photos], progress=False)
    for name, cfg in settings.items():
        out[name]["ms_per_640px_scene"] = round(1000 * time_per_image(FaceDetector(cfg), scenes(640, 8), 3), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--proposals", action="store_true")
    which.add_argument("--pnet", action="store_true")
    which.add_argument("--factor", type=float, nargs="+", metavar="F", help="pyramid factors to compare")
    parser.add_argument("--photos", type=int, help="photos to paste (default: 100 for --proposals, 120 for --pnet)")
    args = parser.parse_args()
    if args.factor:
        report = factors(args.factor, args.photos or 200)
    else:
        report = proposals(args.photos or 100) if args.proposals else pnet(args.photos or 120)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Two questions about finding eye-barred faces in whole scenes, measured on the same pasted
scenes as `benchmarks/detection.py` (`minorage.faces.wild`):

- `--proposals`: how many barred faces YuNet's own boxes cover at score thresholds 0.5, 0.3,
  0.2 (before any O-Net), and the boxes it puts on the face-free evaluation pictures; held-out
  photos.
- `--pnet`: the P-Net threshold of the default detector, chosen away from the benchmark (the
  detector's training photos, the training face-free pictures): the rule is the lowest of 0.6,
  0.55, 0.5, 0.45 with no more false detections there than stock MTCNN and no lower normal-face
  recall than at 0.6.

    .venv/bin/python benchmarks/detection_choices.py --proposals [--photos 100]
    .venv/bin/python benchmarks/detection_choices.py --pnet [--photos 120]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from minorage.config import DetectorConfig, DetectorTrainingConfig
from minorage.faces.detection import FaceDetector, iou
from minorage.faces.detector_training import FACE_FREE_EVAL, FACE_FREE_TRAIN, face_free_pictures, false_detections, held_out_pairs, split_photos
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--proposals", action="store_true")
    which.add_argument("--pnet", action="store_true")
    parser.add_argument("--photos", type=int, help="photos to paste (default: 100 for --proposals, 120 for --pnet)")
    args = parser.parse_args()
    report = proposals(args.photos or 100) if args.proposals else pnet(args.photos or 120)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

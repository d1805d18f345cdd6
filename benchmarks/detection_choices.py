"""Questions about finding eye-barred faces in whole scenes, measured on the same pasted
scenes as `benchmarks/detection.py` (`minorage.faces.wild`):

- `--proposals`: how many barred faces YuNet's own boxes cover at score thresholds 0.5, 0.3,
  0.2 (before any O-Net), and the boxes it puts on the face-free evaluation pictures; held-out
  photos.
- `--pnet`: the P-Net threshold of the default detector, chosen away from the benchmark (the
  detector's training photos, the training face-free pictures): the rule is the lowest of 0.6,
  0.55, 0.5, 0.45 with no more false detections there than stock MTCNN and no lower normal-face
  recall than at 0.6.
- `--stages`: where the default detector loses barred faces in scenes: the share of them still
  covered (IoU 0.3) after P-Net's proposals, after either R-Net, after the O-Nets on that path,
  after YuNet's proposals and the O-Nets on them, and by the whole `detect`; held-out photos.
- `--rnet`: the R-Net threshold of the default detector, chosen away from the benchmark as the
  P-Net threshold was (the detector's training photos, the training face-free pictures): the
  rule is the lowest of 0.7, 0.6, 0.5, 0.4, 0.3, 0.2 with no more false detections there than
  stock MTCNN and no lower normal-face recall than at 0.7.
- `--yunet`: YuNet's score threshold in the default detector (its proposals go to the O-Nets),
  chosen the same way: the lowest of 0.5, 0.4, 0.3, 0.2 with no more false detections there
  than stock MTCNN and no lower normal-face recall than at 0.5.
- `--groups`: the default detector's recall of normal and barred faces in scenes, per sex and per
  ethnicity of the held-out photos (as UTKFace's file names label them), beside stock MTCNN's
  on the same normal scenes: a detector that misses one group of people more often fails them
  before any age is read. `--groups F` runs it on the pyramid step F (`predict`'s 0.842)
  instead of MTCNN's 0.709; `--min-face-size 32` at `scan`'s smallest face; `--skip K` on the
  held-out photos after the first K.
- `--choose-factor F ...`: the image pyramid's step chosen away from the benchmark (the
  detector's training photos, the training face-free pictures), the rule in `docs/research.md`.
- `--choose-onet T ...`: the O-Net threshold (the last stage's score a face must pass) chosen away
  from the benchmark the same way, at `scan`'s smallest face of 32 px and the pyramid step of
  `--onet-factor` (default `predict`'s 0.842), beside `scan`'s detector today (MTCNN's step
  0.709, O-Net 0.7) and stock MTCNN at 32 px; the rule in `docs/research.md`.
- `--factor F ...`: the default detector with a finer image pyramid (P-Net's step between
  scales): recall of normal and barred faces in scenes, per degradation, false detections on
  the face-free evaluation pictures and milliseconds per 640 px scene on one thread; held-out
  photos, as `benchmarks/detection.py`.

    .venv/bin/python benchmarks/detection_choices.py --proposals [--photos 100]
    .venv/bin/python benchmarks/detection_choices.py --pnet [--photos 120]
    .venv/bin/python benchmarks/detection_choices.py --stages [--photos 200]
    .venv/bin/python benchmarks/detection_choices.py --rnet [--photos 120]
    .venv/bin/python benchmarks/detection_choices.py --yunet [--photos 120]
    .venv/bin/python benchmarks/detection_choices.py --groups [F] [--photos 400] [--min-face-size PX] [--skip K]
    .venv/bin/python benchmarks/detection_choices.py --factor 0.709 0.75 0.8 [--photos 200]
    .venv/bin/python benchmarks/detection_choices.py --choose-factor 0.709 0.75 0.8 0.842 [--photos 120]
    .venv/bin/python benchmarks/detection_choices.py --choose-onet 0.7 0.8 0.9 [--onet-factor 0.842] [--photos 120]
    .venv/bin/python benchmarks/detection_choices.py --timing 32 20
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from itertools import chain

import cv2
import numpy as np

from minorage.config import DetectorConfig, DetectorTrainingConfig, InferenceConfig, ScanConfig
from minorage.faces.detection import FaceDetector, cut_patches, iou, squared
from minorage.faces.detector_training import (
    FACE_FREE_EVAL,
    FACE_FREE_TRAIN,
    evaluate_detectors,
    face_free_pictures,
    false_detections,
    face_pairs,
    split_photos,
)
from minorage.faces.wild import found, recall_by_degradation, wild_set
from minorage.faces.yunet import YuNet
from minorage.paper.readers import demographics


def proposals(photos: int) -> dict:
    _, held = split_photos(DetectorTrainingConfig())
    _, barred = face_pairs(held[:photos])
    pictures = face_free_pictures(FACE_FREE_EVAL)
    scenes = wild_set(barred, pictures, seed=1)
    out = {"barred_scenes": len(scenes)}
    for threshold in (0.5, 0.3, 0.2):
        yunet = YuNet(score_threshold=threshold)
        covered = sum(bool(len(rows)) and iou(rows[:, :4], np.array(s.box)).max() >= 0.3 for s in scenes for rows in [yunet.propose(s.image)])
        out[str(threshold)] = {"covered": round(covered / len(scenes), 3), "boxes_on_face_free": sum(len(yunet.propose(p)) for p in pictures)}
    return out


def _covers(boxes, scene, min_iou: float = 0.3) -> bool:
    """Whether any of the boxes (rows of x1, y1, x2, y2[, ...]) overlaps the pasted face."""
    corners = np.array([np.asarray(b, float)[:4] for b in boxes]).reshape(-1, 4)
    return bool(len(corners)) and float(iou(corners, np.array(scene.box)).max()) >= min_iou


def stage_by_stage(detector: FaceDetector, image: np.ndarray) -> Iterator[tuple[str, list]]:
    """The default detector's stages one at a time, as `FaceDetector.cascade` runs them: each
    stage's name and the boxes it leaves (both pairs' together), yielded as each ends."""
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    proposals = detector.propose(rgb)
    yield "pnet", list(proposals)
    patches = cut_patches(rgb, proposals, 24)
    refined = [detector.refine(patches, proposals, rnet) for rnet, _ in detector.pairs] if len(proposals) else []
    yield "rnet", [box for boxes in refined for box in boxes]
    yield "onet_after_rnet", [f.box for (_, onet), boxes in zip(detector.pairs, refined) if len(boxes)
                              for f in detector.output(cut_patches(rgb, boxes, 48), boxes, onet)]
    from_yunet = detector.yunet.propose(image)
    yield "yunet", list(from_yunet)
    squares = squared(from_yunet[:, :4])
    patches = cut_patches(rgb, squares, 48)
    yield "onet_after_yunet", [f.box for _, onet in detector.pairs if len(squares) for f in detector.output(patches, squares, onet)]


def stages(photos: int) -> dict:
    _, held = split_photos(DetectorTrainingConfig())
    _, barred = face_pairs(held[:photos])
    scenes = wild_set(barred, face_free_pictures(FACE_FREE_EVAL), seed=1)
    detector = FaceDetector(DetectorConfig())
    kept: dict[str, list[bool]] = {k: [] for k in ("pnet", "rnet", "onet_after_rnet", "yunet", "onet_after_yunet", "detect")}
    for scene in scenes:
        for key, boxes in stage_by_stage(detector, scene.image):
            kept[key].append(_covers(boxes, scene))
        kept["detect"].append(found(detector, scene))
    kinds = np.array([s.degradation for s in scenes])
    return {"barred_scenes": len(scenes), **{key: {"all": round(float(np.mean(v)), 3), **{d: round(float(np.mean(np.array(v)[kinds == d])), 2)
                                                 for d in dict.fromkeys(kinds.tolist())}} for key, v in kept.items()}}


def by_group(photos: int, factor: float, min_face_size: int = DetectorConfig.min_face_size, skip: int = 0) -> dict:
    """Normal and barred faces found in scenes per sex and ethnicity, by the default detector at
    the given pyramid step and smallest face, and by stock MTCNN at that smallest face on the
    same normal scenes (the recall the default must not fall below); held-out photos after the
    first `skip`."""
    _, held = split_photos(DetectorTrainingConfig())
    pictures = face_free_pictures(FACE_FREE_EVAL)
    detector = FaceDetector(DetectorConfig(factor=factor, min_face_size=min_face_size))
    stock = FaceDetector(DetectorConfig(weights="stock", min_face_size=min_face_size))
    pairs, people = [], []
    for path in held[skip:skip + photos]:
        originals, barred = face_pairs([path])
        if originals:
            pairs.append((originals[0], barred[0]))
            people.append(demographics("utkface", path.name))
    scenes = {kind: wild_set([pair[k] for pair in pairs], pictures, seed=1) for k, kind in enumerate(("normal", "barred"))}
    hits = {kind: np.array([found(detector, scene) for scene in kind_scenes]) for kind, kind_scenes in scenes.items()}
    hits["stock_normal"] = np.array([found(stock, scene) for scene in scenes["normal"]])
    out = {"faces": len(pairs), "min_face_size": min_face_size, "factor": factor, "held_out_skipped": skip}
    for axis, labels in (("sex", np.array([p[0] for p in people])), ("ethnicity", np.array([p[1] for p in people]))):
        out[axis] = {group: {"faces": int(np.sum(labels == group)), **{kind: round(float(np.mean(h[labels == group])), 3) for kind, h in hits.items()}}
                     for group in sorted(set(labels.tolist()))}
    out["all"] = {kind: round(float(np.mean(h)), 4) for kind, h in hits.items()}
    return out


def on_training_scenes(settings: dict[str, DetectorConfig], photos: int, min_face_size: int = DetectorConfig.min_face_size) -> dict:
    """Each detector setting on scenes of the detector's training photos and the training
    face-free pictures: where a setting is chosen, away from the held-out benchmark. Stock
    MTCNN's false detections, the bound a setting is held to, at the given smallest face."""
    train, _ = split_photos(DetectorTrainingConfig())
    originals, barred = face_pairs(train[:: max(1, min(25, len(train) // photos))][:photos])  # every 25th up to 120 photos
    pictures = face_free_pictures(FACE_FREE_TRAIN)
    normal, eye_barred = wild_set(originals, pictures, seed=2), wild_set(barred, pictures, seed=2)
    out = {"faces": len(originals), "stock_false": false_detections(FaceDetector(DetectorConfig(weights="stock", min_face_size=min_face_size)), pictures)}
    for name, cfg in settings.items():
        detector = FaceDetector(cfg)
        out[name] = {"normal": round(recall_by_degradation(detector, normal)["all"], 4),
                     "barred": round(recall_by_degradation(detector, eye_barred)["all"], 4),
                     "false": false_detections(detector, pictures)}
    return out


def thresholds(stage: int | str, tried: tuple[float, ...], photos: int) -> dict:
    """The default detector with one threshold (stage 0 P-Net, 1 R-Net, or "yunet") set to each
    value tried, on the training scenes."""
    return on_training_scenes({str(value): with_threshold(stage, value) for value in tried}, photos)


def with_threshold(stage: int | str, value: float) -> DetectorConfig:
    """The default settings with one stage's threshold replaced."""
    if stage == "yunet":
        return DetectorConfig(yunet_threshold=value)
    chosen = list(DetectorConfig().thresholds)
    chosen[stage] = value
    return DetectorConfig(thresholds=tuple(chosen))


def onet_thresholds(tried: list[float], factor: float, photos: int, min_face_size: int = ScanConfig.min_face_size) -> dict:
    """The default detector at `scan`'s smallest face with each O-Net threshold tried on the
    pyramid step `factor`, beside `scan`'s settings today, on the training scenes."""
    today = DetectorConfig(min_face_size=min_face_size, factor=ScanConfig.pyramid_factor)
    settings = {"scan today": today} | {f"factor {factor}, O-Net {t}": replace(today, factor=factor, thresholds=(*today.thresholds[:2], t))
                                         for t in tried}
    return on_training_scenes(settings, photos, min_face_size)


def factors(steps: list[float], photos: int) -> dict:
    from detection import scenes, time_per_image  # benchmarks/detection.py

    _, held = split_photos(DetectorTrainingConfig())
    settings = {f"factor {f}": DetectorConfig(factor=f) for f in steps}
    out = evaluate_detectors(settings, held[:photos], progress=False)
    for name, cfg in settings.items():
        out[name]["ms_per_640px_scene"] = round(1000 * time_per_image(FaceDetector(cfg), scenes(640, 8), 3), 1)
    return out


def timing(min_face_size: int, count: int = 40, repeats: int = 3) -> dict:
    """Milliseconds per 640 px scene (benchmarks/detection.py's) in each stage of the default
    detector, one thread, the fastest of `repeats` passes: where a scan's detection time goes.
    P-Net's time is given without the pyramid's resizing, which is timed on its own."""
    from detection import scenes  # benchmarks/detection.py

    cv2.setNumThreads(1)
    detector, images = FaceDetector(DetectorConfig(min_face_size=min_face_size)), scenes(640, count)
    best: dict[str, float] = {}
    for _ in range(repeats):
        spent: dict[str, float] = {}
        for image in images:
            clock = time.perf_counter()
            for _ in detector.levels(image):  # the resizing alone, as `propose` does it
                pass
            for key, _ in chain([("pyramid_resizing", None)], stage_by_stage(detector, image)):  # timed as each ends
                now = time.perf_counter()
                spent[key] = spent.get(key, 0.0) + now - clock
                clock = now
            detector.detect(image)
            spent["detect"] = spent.get("detect", 0.0) + time.perf_counter() - clock
        for key, seconds in spent.items():
            best[key] = min(best.get(key, np.inf), 1000 * seconds / len(images))
    best["pnet"] -= best["pyramid_resizing"]
    return {"min_face_size": min_face_size, "scenes": count, "ms_per_scene": {k: round(v, 1) for k, v in best.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--proposals", action="store_true")
    which.add_argument("--pnet", action="store_true")
    which.add_argument("--stages", action="store_true")
    which.add_argument("--rnet", action="store_true")
    which.add_argument("--yunet", action="store_true")
    which.add_argument("--timing", type=int, nargs="+", metavar="PX", help="milliseconds per stage at these smallest face sizes")
    which.add_argument("--groups", type=float, nargs="?", const=DetectorConfig().factor, metavar="F",
                       help="recall per sex and ethnicity, with this image pyramid step (default: MTCNN's)")
    which.add_argument("--factor", type=float, nargs="+", metavar="F", help="pyramid factors to compare on the held-out photos")
    which.add_argument("--choose-factor", type=float, nargs="+", metavar="F", help="pyramid factors to compare on the training scenes")
    which.add_argument("--choose-onet", type=float, nargs="+", metavar="T", help="O-Net thresholds to compare on the training scenes at 32 px")
    parser.add_argument("--min-face-size", type=int, default=DetectorConfig.min_face_size,
                        help="with --groups: the smallest face (default: %(default)s, predict's; scan's is 32)")
    parser.add_argument("--skip", type=int, default=0, help="with --groups: leave out the first K held-out photos (those earlier measures used)")
    parser.add_argument("--onet-factor", type=float, default=InferenceConfig.pyramid_factor, help="with --choose-onet: the pyramid step (default: %(default)s)")
    parser.add_argument("--photos", type=int, help="photos to paste (default: 100 for --proposals, 120 for --pnet, --rnet, --yunet, --choose-factor and --choose-onet, 400 for --groups, 200 otherwise)")
    args = parser.parse_args()
    if args.factor:
        report = factors(args.factor, args.photos or 200)
    elif args.choose_factor:
        report = on_training_scenes({f"factor {f}": DetectorConfig(factor=f) for f in args.choose_factor}, args.photos or 120)
    elif args.choose_onet:
        report = onet_thresholds(args.choose_onet, args.onet_factor, args.photos or 120)
    elif args.timing:
        report = {"timing": [timing(px) for px in args.timing]}
    elif args.pnet:
        report = thresholds(0, (0.6, 0.55, 0.5, 0.45), args.photos or 120)
    elif args.rnet:
        report = thresholds(1, (0.7, 0.6, 0.5, 0.4, 0.3, 0.2), args.photos or 120)
    elif args.yunet:
        report = thresholds("yunet", (0.5, 0.4, 0.3, 0.2), args.photos or 120)
    else:
        report = (stages(args.photos or 200) if args.stages
                  else by_group(args.photos or 400, args.groups, args.min_face_size, args.skip) if args.groups
                  else proposals(args.photos or 100))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""`minorage <command>`: parses arguments and calls the stage modules; nothing else lives here."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from minorage import __version__
from minorage.config import (
    EVALUATION_LOOKS,
    MAX_FRAME_GAP,
    PRETRAINED_NAMES,
    DatasetConfig,
    DetectorTrainingConfig,
    Framings,
    InferenceConfig,
    ScanConfig,
    TrainConfig,
)
from minorage.evidence.paths import printable
from minorage.triage.case import CaseError
from minorage.triage.output import FORMATS, ReaderLeft, output_stream, to_reader, write_rows
from minorage.triage.report import FORMATS as REPORT_FORMATS

if TYPE_CHECKING:  # the model code (and torch) loads only when a command needs it
    from minorage.model.estimator import AgeEstimator

MODEL_HELP = ("default or blend (shipped; blend adds a second age network on open-eyed faces), imdb, morph2, wiki, "
              "megaface_asian (original SSR-Net weights) or a checkpoint path")
DEFAULT_MODEL_NAME = "default"


def _progress_wanted() -> bool:
    return sys.stderr.isatty()


def _detector_config(args: argparse.Namespace):
    from minorage.config import DetectorConfig

    return DetectorConfig(
        min_face_size=args.min_face_size,
        thresholds=tuple(args.thresholds),
        yunet_threshold=args.yunet_threshold,
        weights=args.detector,
        crop_padding=args.crop_padding,
        factor=args.pyramid_factor,
    )


def _detector(args: argparse.Namespace):
    from minorage.faces.detection import FaceDetector

    return FaceDetector(_detector_config(args))


class _Counter:
    """Counts rows by outcome as they stream past, for the closing summary line."""

    NOT_READ = ("link", "link_not_followed", "link_broken")

    def __init__(self):
        self.files: dict[str, set] = {"ok": set(), "no_face": set(), "links": set(), "error": set()}
        self.faces = 0

    def __call__(self, rows):
        for row in rows:
            status = row.get("status")
            kind = status if status in ("ok", "no_face") else "links" if status in self.NOT_READ else "error"
            self.files[kind].add(row["path"])
            self.faces += len(row["faces"]) if "faces" in row else int(row.get("age") is not None)
            yield row

    def seen(self) -> int:
        return sum(len(paths) for paths in self.files.values())

    def summary(self) -> str:
        n = {kind: len(paths) for kind, paths in self.files.items()}
        links = f"; {n['links']} symbolic links recorded" if n["links"] else ""
        return f"{n['ok']} read, {n['no_face']} without a face, {n['error']} errors, {self.faces} faces{links}"


def cmd_predict(args: argparse.Namespace) -> int:
    from minorage.triage.predict import PredictOptions, Predictor, check_outputs, columns

    check_outputs(args.paths, [args.output if args.output != "-" else None])  # --annotate: the Predictor checks it
    options = PredictOptions(
        crops=args.crops,
        face_fraction=args.face_fraction,
        batch_size=args.batch_size,
        max_pixels=args.max_pixels,
        max_bytes=args.max_bytes,
        annotate_dir=Path(args.annotate) if args.annotate else None,
        video_every=args.video_every,
        max_video_frames=args.max_video_frames,
        follow_links=args.follow_links,
        minor_above=_minor_above(args),
        threads=args.threads,
    )
    predictor = Predictor(_estimator(args), _detector(args), options)
    counter = _Counter()
    with output_stream(args.output) as stream:
        write_rows(counter(predictor.run(args.paths, _progress_wanted())), args.format, stream, columns(args.crops, predictor.estimator))
    if not counter.seen():
        print(f"minorage predict: no image or video file found in {printable(' '.join(args.paths))} "
              f"(folders are searched for {', '.join(sorted(predictor.suffixes))})", file=sys.stderr)
        return 1
    print(f"minorage predict: {counter.summary()}", file=sys.stderr)
    return 0 if counter.files["ok"] or counter.files["no_face"] else 1


def cmd_occlude(args: argparse.Namespace) -> int:
    from minorage.faces.occlusion import occlude_files

    out_dir = Path(args.out)
    sidecar = out_dir / args.sidecar
    out_dir.mkdir(parents=True, exist_ok=True)
    counter = _Counter()
    with output_stream(sidecar) as stream:
        rows = occlude_files(args.paths, out_dir, _detector(args), args.max_pixels, _progress_wanted())
        write_rows(counter(rows), "jsonl", stream, ())
    for path in sorted(counter.files["no_face"]):
        print(f"no face (not copied): {printable(path)}", file=sys.stderr)
    print(f"minorage occlude: {counter.summary()} barred; sidecar {sidecar}", file=sys.stderr)
    return 0 if counter.files["ok"] or counter.files["no_face"] else 1


def cmd_detector_train(args: argparse.Namespace) -> int:
    from minorage.config import DetectorTrainingConfig
    from minorage.faces.detector_training import train_detector

    cfg = DetectorTrainingConfig(photos=args.photos, epochs=args.epochs, seed=args.seed, lr=args.lr, scenes=args.scenes,
                                 negatives=args.negatives)
    card = train_detector(Path(args.out), cfg, progress=True)
    print(json.dumps(card, indent=2))
    return 0


def cmd_detector_evaluate(args: argparse.Namespace) -> int:
    from minorage.config import DetectorConfig, DetectorTrainingConfig
    from minorage.faces.detector_training import evaluate_detectors, split_photos

    _, held = split_photos(DetectorTrainingConfig())
    held = held[: args.photos] if args.photos else held
    settings = {name: DetectorConfig(weights=name) for name in args.weights}
    results = evaluate_detectors(settings, held, progress=_progress_wanted(), face_free=args.face_free)
    print(json.dumps(results, indent=2))
    return 0


def cmd_dataset_build(args: argparse.Namespace) -> int:
    from minorage.config import DatasetConfig, DetectorConfig, Framing
    from minorage.paper.build import build_dataset

    sources = []
    for spec in args.source:
        name, sep, folder = spec.partition("=")
        if not sep:
            raise ValueError(f"--source takes NAME=FOLDER, got {spec!r}")
        sources.append((name, folder))
    cfg = DatasetConfig(
        sources=tuple(sources),
        per_age=args.per_age,
        adults_per_age=args.adults_per_age,
        adult_max_age=args.adult_max_age,
        seed=args.seed,
        near_duplicate_bits=args.near_duplicate_bits,
        copy_min_correlation=args.copy_min_correlation,
        framing=Framing(margin=args.margin, template=args.template),
        detector=DetectorConfig(weights=args.detector),
    )
    summary = build_dataset(cfg, Path(args.out), progress=True, workers=args.workers)
    faces = summary["faces"]
    print(json.dumps(summary, indent=2))
    print(f"minorage dataset build: {summary['records']} photos read, {summary['after_cleaning']} after cleaning, "
          f"{summary['selected']} selected, {summary['no_face']} without a face; faces {faces}", file=sys.stderr)
    return 0


def cmd_dataset_info(args: argparse.Namespace) -> int:
    from minorage.paper.store import dataset_info

    info = dataset_info(Path(args.dir))
    if args.format == "json":
        print(json.dumps(info, indent=2))
        return 0
    columns = ("train_org", "train_ocl", "test_org", "test_ocl")
    print(f"{info['folder']}: {info['photos']} photos, {info['faces']} faces, sources {info['sources']}, framing {info['framing']}")
    print("age  " + "  ".join(f"{c:>9s}" for c in columns))
    for age, counts in info["per_age"].items():
        print(f"{age:>3}  " + "  ".join(f"{counts.get(c, 0):9d}" for c in columns))
    print(f"shortfall per age: {info['shortfall_per_age'] or 'none'}; cleaning: {info['cleaning']}; no face: {info['no_face']}")
    agreement = info["label_agreement"]
    if agreement["groups_of_copies"]:
        print(f"labels of copies: {agreement['groups_with_conflicting_ages']} of {agreement['groups_of_copies']} groups of copies "
              f"disagree (median by {agreement['median_age_span_of_conflicts']:g} years); "
              f"{agreement['groups_labelled_minor_and_adult']} were labelled both a minor and an adult, "
              f"{agreement['of_which_also_labelled_adult']} of the {agreement['groups_with_a_copy_labelled_16_17']} "
              "with a copy labelled 16 or 17")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from minorage.config import TrainConfig
    from minorage.paper.training import train

    options = json.loads(Path(args.config).read_text()) if args.config else {}
    for key in ("variant", "init", "init_member", "epochs", "seed"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    card = train(Path(args.data), Path(args.out), TrainConfig.from_dict(options), progress=True)
    print(json.dumps({k: card[k] for k in ("name", "training", "metrics")}, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from minorage.paper.calibration import check_if_calibrated_on
    from minorage.paper.evaluation import as_markdown, evaluate_model, photo_ids

    variants = ("org", "ocl") if args.variant == "both" else (args.variant,)
    estimator = _estimator(args)
    left_out = Path(args.exclude).read_text().split() if args.exclude else []
    found: list = []  # the photos named that are in this data set, and so left out
    if left_out:
        found, absent = photo_ids(Path(args.data), left_out)
        print(f"minorage evaluate: leaving out {len(found)} of the {len(left_out)} photos named in {args.exclude}"
              f"{f' ({len(absent)} are not in this data set, e.g. {absent[0]})' if absent else ''}", file=sys.stderr)
    look = "scenes" if args.scenes is not None else args.look
    if args.scenes_skip and look != "scenes":
        raise ValueError("--scenes-skip only says which photos go into scenes: give it with --scenes")
    if look == "scenes":
        from minorage.paper.in_scenes import evaluate_in_scenes

        results = evaluate_in_scenes(estimator, _detector(args), Path(args.data), variants, left_out, args.scenes, args.bootstrap,
                                     skip=args.scenes_skip)
    else:
        results = evaluate_model(estimator, Path(args.data), variants, resamples=args.bootstrap, exclude=left_out, look=look)
    # the calibration was fit on faces as they are, as stored: checked only on those
    checked = check_if_calibrated_on(estimator, Path(args.data), left_out) if look == "as-is" else None
    if args.record:
        from minorage.model.card import record_metrics, resolve_model

        where = record_metrics(resolve_model(args.model), args.record, {
            "command": "minorage " + " ".join(args.words), "data": args.data, "look": look, "left_out": len(found),
            "measured": time.strftime("%Y-%m-%d"), **results})
        print(f"minorage evaluate: measures recorded as {args.record!r} in {where}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps({**results, **({"calibration_check": checked} if checked else {})}, indent=2))
    else:
        shown = {"as-is": "", "scenes": ", photos in scenes, detection on"}.get(look, f", faces in {look}")
        print(as_markdown(results, f"{estimator.card.name or args.model} on {args.data} (test split{shown})"))
        if checked:
            from minorage.paper.calibration import as_markdown as calibration_markdown

            print(calibration_markdown(checked))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from minorage.model.card import resolve_model
    from minorage.model.checkpoint import load_checkpoint, save_checkpoint
    from minorage.paper.calibration import as_markdown, calibrate

    estimator = _estimator(args)
    left_out = Path(args.exclude).read_text().split() if args.exclude else []
    calibrations, tables = calibrate(estimator, Path(args.data), left_out, args.half)
    source = resolve_model(args.model)
    net, card = load_checkpoint(source) if source else (estimator.net, estimator.card)  # every part kept
    card.calibration = calibrations["main"].to_dict()
    if "edge" in calibrations:
        card.edge = {**card.edge, "calibration": calibrations["edge"].to_dict()}
    path = save_checkpoint(net, card, Path(args.out))
    for part, table in tables.items():
        where = "of the calibration half, each judged by a fit on the other folds"
        print(as_markdown(table, where + (f" ({part} part)" if len(tables) > 1 else "")))
    print(f"minorage calibrate: {path} (the same weights; its card carries each part's p_minor and age interval)", file=sys.stderr)
    return 0


def _check_second_opinion(args: argparse.Namespace) -> None:
    """`combine`'s second-opinion options come together or not at all."""
    reads = args.veto is not None or bool(args.weight) or args.weight_barred is not None
    if bool(args.second_opinion) != reads or ((args.raise_by or args.raise_barred) and not args.second_opinion):
        raise ValueError("--second-opinion MODEL goes with --veto YEARS, --weight SHARE, --weight-barred SHARE or several "
                         "(and --raise, --raise-barred with them)")
    if args.raise_barred and args.weight_barred is None:
        raise ValueError("--raise-barred raises the flag of the barred faces --weight-barred has the second opinion read: give it too")


def cmd_combine(args: argparse.Namespace) -> int:
    from minorage.model.checkpoint import load_checkpoint, save_checkpoint
    from minorage.model.ensemble import attach_edge, attach_grayscale, attach_second_opinion
    from minorage.paper.ensembles import make_ensemble

    name = args.name or Path(args.out).stem
    if not 0 <= args.keep_start < 1:
        raise ValueError(f"--keep-start is a share from 0 up to, not including, 1; got {args.keep_start}")
    _check_second_opinion(args)
    if (args.grayscale or args.edge or args.second_opinion or args.align_faces or args.minor_below is not None
            or args.minor_below_barred is not None) \
            and len(args.models) == 1 and not (
            args.mirror or args.data or args.choose is not None or args.keep_start):
        net, card = load_checkpoint(Path(args.models[0]))  # kept whole: its flag and calibration too
        card.name = name
    else:
        net, card, chosen = make_ensemble([Path(m) for m in args.models], args.mirror, name,
                                          Path(args.data) if args.data else None, args.choose, args.keep_start)
        if args.choose is not None:
            print(f"minorage combine: chose {' '.join(chosen)} (validation MAE averaged over ages "
                  f"{card.metrics['val_mae_age_averaged']:.3f})", file=sys.stderr)
    if args.grayscale:
        net, card = attach_grayscale(net, card, *load_checkpoint(Path(args.grayscale)), args.grayscale)
    if args.align_faces:
        card.framing = dataclasses.replace(card.framing, align=True)
    if args.minor_below is not None:
        card.minor_below = args.minor_below
    if args.minor_below_barred is not None:
        card.minor_below_barred = args.minor_below_barred
    if args.edge_above and not args.edge:
        raise ValueError("--edge-above routes faces to the model given by --edge: give it too")
    if args.edge:
        net, card = attach_edge(net, card, *load_checkpoint(Path(args.edge)), args.edge, args.edge_above)
    calibrated = card.calibration is not None
    if args.second_opinion:
        net, card = attach_second_opinion(net, card, *load_checkpoint(Path(args.second_opinion)), args.second_opinion, args.veto,
                                          args.raise_by, args.weight,
                                          None if args.weight_barred is None else {"weight": args.weight_barred, "raise": args.raise_barred})
    path = save_checkpoint(net, card, Path(args.out))
    routed = (f", black-and-white faces to {args.grayscale}" if args.grayscale else "") + \
        (f", faces whose frame leaves the photo to {args.edge}" if args.edge else "") + \
        (f", faces with open eyes read by {args.second_opinion} too" if args.second_opinion else "")
    print(f"minorage combine: {card.members} networks{' x 2 views' if card.mirror else ''}{routed} -> {path}", file=sys.stderr)
    if calibrated and card.calibration is None:
        print("minorage combine: the ages are blended, so the model's p_minor and age interval were left out; "
              f"`minorage calibrate --model {path} --data DIR --out PATH` fits them at the blended ages", file=sys.stderr)
    return 0


def cmd_experiment_run(args: argparse.Namespace) -> int:
    from minorage.paper.experiments import load_config, run

    cfg = load_config(Path(args.config))
    out = Path(args.out or Path("runs/experiments") / Path(args.config).stem)
    results = run(cfg, out, progress=True)
    print(f"minorage experiment run: {len(results)} cells finished in {out}", file=sys.stderr)
    return 0


def cmd_experiment_report(args: argparse.Namespace) -> int:
    from minorage.paper.experiments import report

    for path in report(Path(args.dir), Path(args.out)):
        print(path)
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from minorage.triage.workers import start_fork_server

    start_fork_server(("minorage.triage.scan",))  # the workers' imports beside this process's own
    from minorage.config import ScanConfig
    from minorage.triage.scan import scan

    cfg = ScanConfig(workers=args.workers, video_every=args.video_every, max_video_frames=args.max_video_frames, max_pixels=args.max_pixels,
                     max_bytes=args.max_bytes, follow_links=args.follow_links, file_timeout=args.file_timeout, minor_above=_minor_above(args))
    summary = scan(args.sources, Path(args.out), _estimator(args), _detector_config(args), cfg, _progress_wanted())
    print(f"minorage scan: {summary.line()}; case in {printable(args.out)}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from minorage.triage.report import write_report

    target = args.output or str(Path(args.case) / f"report.{'vics.json' if args.format == 'vics' else args.format}")
    with output_stream(target) as stream, to_reader():  # the report reads only the case: a broken pipe is the reader
        n = write_report(Path(args.case), args.format, stream, args.max_faces)
    print(f"minorage report: {n} faces -> {printable(target) if target != '-' else 'stdout'}", file=sys.stderr)
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    import getpass

    from minorage.triage.review import serve

    def announce(url: str) -> None:
        print(f"minorage review: open {url} in a browser on this machine (Ctrl-C ends the review; decisions are saved as they are made)",
              file=sys.stderr, flush=True)

    try:
        serve(Path(args.case), args.port, args.reviewer or getpass.getuser(), announce)
    except KeyboardInterrupt:
        print("minorage review: ended", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from minorage.model.card import describe_checkpoint, resolve_model

    if (path := resolve_model(args.model)) is not None:  # a checkpoint: its card and header, without torch
        from minorage.model.exported_parts import runs_in

        print(json.dumps({**describe_checkpoint(args.model), "predict_runs_in": runs_in(path)}, indent=2))
        return 0
    from minorage.model.estimator import AgeEstimator

    print(json.dumps(AgeEstimator.from_pretrained(args.model).describe(), indent=2))
    return 0


def _reading_options(p: argparse.ArgumentParser) -> None:
    """How evidence is read: the limits that bound memory, video sampling, links."""
    d = InferenceConfig()
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="refuse larger images and video frames, from their header, before decoding (default: %(default)s)")
    p.add_argument("--max-bytes", type=int, default=d.max_bytes, help="refuse image files larger than this many bytes; videos are streamed (default: %(default)s)")
    p.add_argument("--video-every", type=float, default=d.video_every,
                   help=f"seconds between video frames looked at, by the frames' time stamps; at least one frame in {MAX_FRAME_GAP} x this many is looked at whatever the container claims (default: %(default)s)")
    p.add_argument("--max-video-frames", type=int, default=d.max_video_frames, help="frames looked at per video, at most (default: %(default)s)")
    p.add_argument("--follow-links", action="store_true", help="read what symbolic links pointing outside the sources lead to (default: record such links, with their targets, unread)")


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help=f"{MODEL_HELP} (default: %(default)s)")
    p.add_argument("--minor-below", type=float, metavar="YEARS",
                   help="flag estimates below this as probable minors (default: the model's own, 17.5 for the shipped one); "
                        "higher catches more minors and flags more young adults: `minorage evaluate` shows both")


def _flag_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minor-above", type=float, metavar="P",
                   help="flag faces whose calibrated probability of being under 18 (p_minor) is above P, instead of an age "
                        "threshold; needs a calibrated model, as the shipped one is (default: the age threshold)")


def _minor_above(args: argparse.Namespace) -> float | None:
    if args.minor_above is not None and args.minor_below is not None:
        raise ValueError("--minor-above and --minor-below each set the flag: give one of them")
    return args.minor_above


def _estimator(args: argparse.Namespace) -> AgeEstimator:
    from minorage.model.estimator import AgeEstimator

    return AgeEstimator.from_pretrained(args.model, minor_below=args.minor_below)


def _detector_options(p: argparse.ArgumentParser, min_face_size: int | None = None, factor: float = InferenceConfig.pyramid_factor) -> None:
    from minorage.config import DetectorConfig

    d = DetectorConfig(**({"min_face_size": min_face_size} if min_face_size else {}), factor=factor)
    g = p.add_argument_group("face detection (MTCNN)")
    g.add_argument("--detector", default=d.weights,
                   help="union+yunet (MTCNN's P-Net and YuNet propose, the stock and eye-bar-tuned R/O-Nets decide: every face any finds), "
                        "union (P-Net's proposals only: a quarter less time, fewer faces in whole scenes), occlusion (the tuned pair alone), "
                        "stock (facenet-pytorch's), yunet (YuNet's proposals only) or a folder with pnet/rnet/onet.pt (default: %(default)s)")
    g.add_argument("--min-face-size", type=int, default=d.min_face_size, help="smallest face in pixels; larger is faster (default: %(default)s)")
    g.add_argument("--pyramid-factor", type=float, default=d.factor,
                   help="step between the image pyramid's scales; nearer 1 looks at more scales, finds more eye-barred faces and takes longer "
                        "(MTCNN's is 0.709) (default: %(default)s)")
    g.add_argument("--thresholds", type=float, nargs=3, default=list(d.thresholds), metavar=("P", "R", "O"), help="P-Net, R-Net, O-Net score thresholds (default: %(default)s)")
    g.add_argument("--yunet-threshold", type=float, default=d.yunet_threshold, help="YuNet's score for proposing a face to the O-Nets (default: %(default)s)")
    g.add_argument("--crop-padding", type=float, default=d.crop_padding, help="black border, as a share of the image side, for a second look when a face touches the edge (face crops); 0 = off (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minorage", description="Age estimation for minors and young adults, robust to eye occlusion.")
    parser.add_argument("--version", action="version", version=f"minorage {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="estimate the age of every face in images, videos or folders of them")
    p.add_argument("paths", nargs="+", help="image and video files, or folders searched recursively for them")
    p.add_argument("--crops", action="store_true", help="each image is one face crop: its main face is found and framed, "
                   "the whole image taken as the face only where none is found (the row's `framing` says which)")
    p.add_argument("--annotate", metavar="DIR", help="write copies with boxes and ages drawn into DIR")
    _detector_options(p)
    _model_options(p)
    _flag_option(p)
    p.add_argument("--format", choices=FORMATS, default="jsonl", help="output rows (default: %(default)s)")
    p.add_argument("--output", "-o", help="write rows to this file instead of standard output")
    p.add_argument(
        "--face-fraction", type=float, default=InferenceConfig.face_fraction,
        help="with --crops, where no face is found in a crop: the share of each side that the face box covers; 1 = the whole "
        "crop is the face box, the model's margin is then added with repeated edge pixels (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=InferenceConfig.batch_size, help="faces per network call (default: %(default)s)")
    p.add_argument("--threads", type=int, default=InferenceConfig.threads,
                   help="files read and searched for faces at once; 0 = one per CPU core (default: %(default)s)")
    _reading_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("occlude", help="eye-barred copies of images (paper §3.2) with a JSONL sidecar")
    p.add_argument("paths", nargs="+", help="image files, or folders searched recursively for images")
    p.add_argument("--out", required=True, help="output folder: same relative paths and names as the inputs")
    p.add_argument("--sidecar", default="occlusions.jsonl", help="sidecar file name in --out (default: %(default)s)")
    p.add_argument("--max-pixels", type=int, default=InferenceConfig.max_pixels, help="refuse larger images (default: %(default)s)")
    _detector_options(p)
    p.set_defaults(func=cmd_occlude)

    det = sub.add_parser("detector", help="fine-tune and measure the face detector on eye-barred faces")
    det_sub = det.add_subparsers(dest="detector_command", required=True)
    p = det_sub.add_parser("train", help="fine-tune MTCNN's R-Net and O-Net on eye-barred UTKFace faces")
    p.add_argument("--out", required=True, help="folder for rnet.pt, onet.pt and card.json")
    t = DetectorTrainingConfig()
    p.add_argument("--photos", type=int, default=t.photos, help="training photos (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=t.epochs, help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=t.lr, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=t.seed, help="(default: %(default)s)")
    p.add_argument("--scenes", type=int, nargs="?", const=1, default=t.scenes, metavar="N",
                   help="also train on each photo and its barred copy pasted into N face-free scenes (1 if N is not given), "
                        "turned and degraded (grayscale, sepia, low resolution, JPEG, blur, noise, cut by the edge)")
    p.add_argument("--negatives", default=t.negatives, metavar="FOLDER",
                   help="a folder of more face-free pictures (animals, toys), searched through: the four fifths not held out "
                        "by content hash also give negatives, so that faces which are not human are not taken for faces")
    p.set_defaults(func=cmd_detector_train)
    p = det_sub.add_parser("evaluate", help="recall on held-out faces, as they are and eye-barred, and false detections")
    p.add_argument("weights", nargs="+", help="stock, occlusion (shipped) or weight folders")
    p.add_argument("--photos", type=int, default=0, help="use only the first N held-out photos (default: all)")
    p.add_argument("--face-free", default="", metavar="FOLDER",
                   help="also count false detections on the held-out fifth of this folder of face-free pictures (`train --negatives`)")
    p.set_defaults(func=cmd_detector_evaluate)

    ds = sub.add_parser("dataset", help="build and inspect the balanced minors and young adults data set")
    ds_sub = ds.add_subparsers(dest="dataset_command", required=True)
    p = ds_sub.add_parser("build", help="read sources, clean labels, select N per age, prepare org/ocl faces, split 80/20")
    p.add_argument("--source", action="append", required=True, metavar="NAME=FOLDER",
                   help="utkface, appa-real, agedb, imdb, wiki, fgnet or csv, with its folder; repeat for several")
    p.add_argument("--per-age", type=int, required=True, help="photos per age 0..25 (the paper: 250, 500, 1000, 5000)")
    p.add_argument("--out", required=True, help="data set folder (an interrupted build resumes here)")
    d = DatasetConfig(sources=())
    p.add_argument("--adults-per-age", type=int, default=d.adults_per_age, help="also photos per age 26..--adult-max-age, for the minor/adult decision (default: %(default)s)")
    p.add_argument("--adult-max-age", type=int, default=d.adult_max_age, help="the oldest age of those adults (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    p.add_argument("--margin", type=float, default=d.framing.margin, help="framing: share of the face box added on every side (default: %(default)s)")
    p.add_argument("--template", action="store_true",
                   help="store each face on dlib's five-point template by the detector's eyes and nose, --margin its border, "
                        "instead of its framed box: faces for a network trained on dlib's chips, read as a second opinion")
    p.add_argument("--near-duplicate-bits", type=int, default=d.near_duplicate_bits, help="perceptual-hash bits within which photos count as copies (default: %(default)s)")
    p.add_argument("--copy-min-correlation", type=float, default=d.copy_min_correlation,
                   help="photos with close hashes count as copies only if their grey thumbnails correlate this well; "
                        "0 trusts the hash alone, as data sets built by minorage 0.1 did (default: %(default)s)")
    p.add_argument("--detector", default=d.detector.weights, help="MTCNN weights for the original photos (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="processes that prepare the faces, one thread each where more than one (default: %(default)s)")
    p.set_defaults(func=cmd_dataset_build)
    p = ds_sub.add_parser("info", help="counts per age, split and variant")
    p.add_argument("dir")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_dataset_info)

    p = sub.add_parser("train", help="fine-tune SSR-Net on a data set's training split (paper §3.3)")
    p.add_argument("--data", required=True, help="a data set folder from `minorage dataset build`")
    p.add_argument("--out", required=True, help="run folder: model.safetensors/.json, history.json, curves.png (resumes here)")
    t = TrainConfig()
    p.add_argument("--variant", choices=("org", "ocl", "org+ocl"), help=f"faces to train on (default: the config file's, else {t.variant})")
    p.add_argument("--init", help=f"{', '.join(PRETRAINED_NAMES)}, scratch or a checkpoint (default: the config file's, else {t.init})")
    p.add_argument("--init-member", type=int, help=f"with --init an ensemble: which of its networks to start from (default: the config file's, else {t.init_member})")
    p.add_argument("--epochs", type=int, help=f"(default: the config file's, else {t.epochs})")
    p.add_argument("--seed", type=int, help=f"(default: the config file's, else {t.seed})")
    p.add_argument("--config", help="JSON file of training options (minorage.config.TrainConfig); flags override it")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="MAE, group accuracy, confusion and the minor decision on a test split")
    _model_options(p)
    p.add_argument("--data", required=True, help="a data set folder from `minorage dataset build`")
    p.add_argument("--variant", choices=("org", "ocl", "both"), default="both", help="(default: %(default)s)")
    p.add_argument("--format", choices=("md", "json"), default="md", help="(default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="test sets drawn again N times for the 95%% intervals of the headline measures; 0: none (default: %(default)s)")
    p.add_argument("--exclude", metavar="FILE", help="photos to leave out of the test split, one per line, by file name or photo id "
                   "(the manifest's `id`): those a model was trained on elsewhere")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--look", choices=EVALUATION_LOOKS, default="as-is",
                       help="the test faces as they are, or as seized photos may hold them: grayscale, sepia, low-resolution "
                       "(a 24 px face enlarged), jpeg (quality 15) (default: %(default)s)")
    shown.add_argument("--scenes", type=int, nargs="?", const=0, metavar="N",
                       help="instead of the stored faces, each test photo (the first N by id; all if N is not given) pasted into a "
                            "face-free scene, turned and degraded, its face found by the detector `predict` uses and framed from its box: "
                            "the model as users run it; reports the faces found and the minors flagged with misses counted as unflagged")
    p.add_argument("--scenes-skip", type=int, default=0, metavar="K",
                   help="with --scenes: start after the first K test photos by id (scenes of photos another judgement left alone) "
                        "(default: %(default)s)")
    _detector_options(p)
    p.add_argument("--record", metavar="KEY", help="also write these measures (per sex and per ethnicity, with the command that "
                   "made them) into the model card beside the checkpoint, under metrics[KEY]; the weights are not touched")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate", help="fit p_minor and the 90%% age interval on half of a test split, each part of a joined model at "
                                        "the ages it reports (a second opinion's share blended in); `evaluate` checks them on the other half")
    _model_options(p)
    p.add_argument("--data", required=True, help="a data set folder from `minorage dataset build` whose test split the model never saw")
    p.add_argument("--exclude", metavar="FILE", help="photos to leave out, one per line, by file name or photo id: those the model saw elsewhere")
    p.add_argument("--out", required=True, help="the calibrated checkpoint's path (.safetensors; the weights unchanged, the card with the calibration)")
    p.add_argument("--half", choices=("calibration", "check"), default="calibration",
                   help="the half of the test split to fit on; `evaluate` judges on the other. `check` swaps the halves, to measure "
                        "the same procedure the other way round (default: %(default)s)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("combine", help="average several trained models into one (e.g. the Org and Ocl models)")
    p.add_argument("models", nargs="+", help="checkpoints (.safetensors) to average")
    p.add_argument("--out", required=True, help="the ensemble's checkpoint path")
    p.add_argument("--mirror", action="store_true", help="also average each model over the mirrored face")
    p.add_argument("--name", help="the model card's name (default: the file name)")
    p.add_argument("--data", help="the members' data set: measure the ensemble on their shared validation photos (into its card)")
    p.add_argument("--choose", type=int, metavar="K", help="with --data: keep only the ensemble of at most K networks "
                   "(a model that is an ensemble counts its networks) with the lowest validation MAE averaged over ages")
    p.add_argument("--grayscale", metavar="MODEL", help="a grayscale specialist: black-and-white faces are estimated by it "
                   "instead (a single MODEL with no other option keeps its card whole: its flag and calibration)")
    p.add_argument("--align-faces", action="store_true", help="frame each face upright by its eye line before the model sees it "
                   "(the card's framing; a single MODEL with no other option keeps its card whole otherwise)")
    p.add_argument("--keep-start", type=float, default=0.0, metavar="SHARE",
                   help="move each fine-tuned network's weights this share of the way back to the network it started from "
                        "(its card's init): keeps more of what the start did well (default: %(default)s, the fine-tuned weights)")
    p.add_argument("--minor-below", type=float, metavar="YEARS", help="the card's flag: estimates below this are probable minors "
                   "(default: the members' own when they agree, else 17.5)")
    p.add_argument("--minor-below-barred", type=float, metavar="YEARS",
                   help="the card's flag for eye-barred faces, where it should differ from --minor-below (default: the same)")
    p.add_argument("--edge", metavar="MODEL", help="a model for the faces whose frame leaves the photo (the photo's edge fills "
                   "it, as in every stored UTKFace face): they are read by it, at its own framing, flags and calibration")
    p.add_argument("--edge-above", type=float, default=Framings._field_defaults["edge_above"], metavar="SHARE",
                   help="with --edge: only faces more than this share of whose frame lies past the photo go to it; faces cut "
                        "a little by the photo's border stay with the main model (default: %(default)s, any)")
    p.add_argument("--second-opinion", metavar="MODEL", help="a second age network (dlib's, imported by scripts/import_resnet_age.py, "
                   "or trained on from it) that reads each detected face with open eyes on dlib's aligned chip, with --veto, "
                   "--weight or both (docs/model-history.md, steps 23 and 27)")
    p.add_argument("--veto", type=float, metavar="YEARS", help="with --second-opinion: a flag stands only where it says less than this")
    p.add_argument("--weight", type=float, default=0.0, metavar="SHARE",
                   help="with --second-opinion: its share in the age of the faces it reads, the model's own the rest (default: %(default)s)")
    p.add_argument("--weight-barred", type=float, metavar="SHARE",
                   help="with --second-opinion: it reads eye-barred faces too, with this share in their age (default: it does not read them)")
    p.add_argument("--raise-barred", type=float, default=0.0, metavar="YEARS",
                   help="with --weight-barred: years added to the flag on the barred faces it reads (default: %(default)s)")
    p.add_argument("--raise", dest="raise_by", type=float, default=0.0, metavar="YEARS",
                   help="with --second-opinion: years added to the flag on the faces it reads (default: %(default)s)")
    p.set_defaults(func=cmd_combine)

    exp = sub.add_parser("experiment", help="the paper's experiment grid: run it, report Tables 2-3 and Figures 3, 5, 6")
    exp_sub = exp.add_subparsers(dest="experiment_command", required=True)
    p = exp_sub.add_parser("run", help="train and test every cell of a grid (finished cells are skipped)")
    p.add_argument("config", help="a grid YAML file, e.g. experiments/paper.yaml")
    p.add_argument("--out", help="run folder (default: runs/experiments/<config name>)")
    p.set_defaults(func=cmd_experiment_run)
    p = exp_sub.add_parser("report", help="tables, figures and summary from a run folder")
    p.add_argument("dir", help="the run folder of `minorage experiment run`")
    p.add_argument("--out", default="results/paper", help="(default: %(default)s)")
    p.set_defaults(func=cmd_experiment_report)

    p = sub.add_parser("scan", help="triage a collection: every face in images and videos into a case store (resumable)")
    p.add_argument("sources", nargs="+", help="files and folders (walked recursively; evidence is only read)")
    p.add_argument("--out", required=True, help="case folder: case.sqlite (a re-run resumes it)")
    _model_options(p)
    _flag_option(p)
    scan_defaults = ScanConfig()
    p.add_argument("--workers", type=int, default=scan_defaults.workers, help="processes reading and detecting; 0 = one per core (default: %(default)s)")
    p.add_argument("--file-timeout", type=float, default=scan_defaults.file_timeout,
                   help="seconds one file may take; past it the file is recorded as `timeout` and its worker replaced (default: %(default)s)")
    _reading_options(p)
    _detector_options(p, scan_defaults.min_face_size, scan_defaults.pyramid_factor)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("report", help="a scanned case as an HTML page to share, CSV, JSON or Project VIC's VICS JSON, with the reviews")
    p.add_argument("case", help="a case folder written by `minorage scan`")
    p.add_argument("--format", choices=REPORT_FORMATS, default="html",
                   help="html (a page to look at), csv (one row per face), json (the whole case), vics (Project VIC's VICS 2.0 JSON, "
                        "one Media per file with its MD5 and SHA-1, for forensic suites and hash sets) (default: %(default)s)")
    p.add_argument("-o", "--output", help="file to write, - for stdout (default: CASE/report.FORMAT)")
    p.add_argument("--max-faces", type=int, help="at most this many faces, youngest first (default: all)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("review", help="review a scanned case's faces in the browser: minor / adult / not a face / unsure, saved in the case")
    p.add_argument("case", help="a case folder written by `minorage scan`")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one, printed with the address)")
    p.add_argument("--reviewer", help="the name recorded with each decision (default: the login name)")
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("info", help="describe a model: parameters, size, age range, framing, training metadata")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL_NAME, help=MODEL_HELP)
    p.set_defaults(func=cmd_info)
    return parser


#: The exit status of a command whose reader left early, as a shell reports one ended by SIGPIPE.
READER_LEFT = 141


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.words = list(sys.argv[1:] if argv is None else argv)  # the command as given, for what records it
    try:
        return args.func(args)
    except ReaderLeft:  # `minorage predict ... | head`: ends quietly
        _drop_standard_output()
        return READER_LEFT
    except (CaseError, OSError, ValueError) as exc:
        print(f"minorage {args.command}: error: {printable(str(exc))}", file=sys.stderr)
        return 2


def _drop_standard_output() -> None:
    """Point standard output at /dev/null, so what is still buffered for a reader that left does
    not fail the interpreter's exit. Why not SIGPIPE's default action instead: it would end the
    whole process the moment any pipe broke, a scan's worker pipes included, and stay set for
    whatever else runs in the process."""
    try:
        target = sys.stdout.fileno()
    except (OSError, ValueError):  # no file descriptor behind it (captured, replaced): nothing to drop
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, target)
    os.close(devnull)


def run() -> NoReturn:
    """The `minorage` command: `main`, then an exit without the interpreter's last garbage
    collection, which, in the commands that load PyTorch, walks every object it made only to free
    memory the system frees anyway (0.3-0.4 s); what is written is already flushed and closed."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()

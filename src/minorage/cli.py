"""`minorage <command>`: parses arguments and calls the stage modules; nothing else lives here."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__
from .config import InferenceConfig
from .output import FORMATS, write_rows

MODEL_HELP = "imdb, morph2, wiki, megaface_asian (original SSR-Net weights) or a checkpoint path"
DEFAULT_MODEL_NAME = "imdb"


def _progress_wanted() -> bool:
    return sys.stderr.isatty()


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import CROP_COLUMNS, CropOptions, predict_crops
    from .models import AgeEstimator

    if not args.crops:
        print("minorage predict: face detection in full photos is not available yet; use --crops", file=sys.stderr)
        return 2
    estimator = AgeEstimator.from_pretrained(args.model)
    options = CropOptions(face_fraction=args.face_fraction, batch_size=args.batch_size, max_pixels=args.max_pixels)
    counts = {"ok": 0, "error": 0}

    def counted(rows):
        for row in rows:
            counts["ok" if row["status"] == "ok" else "error"] += 1
            yield row

    rows = counted(predict_crops(args.paths, estimator, options, progress=_progress_wanted()))
    with _open_output(args.output) as stream:
        write_rows(rows, args.format, stream, CROP_COLUMNS)
    print(f"minorage predict: {counts['ok']} read, {counts['error']} errors", file=sys.stderr)
    return 0 if counts["ok"] else 1


def cmd_info(args: argparse.Namespace) -> int:
    from .models import AgeEstimator

    print(json.dumps(AgeEstimator.from_pretrained(args.model).describe(), indent=2))
    return 0


class _Stdout:
    """A context manager for stdout that leaves it open."""

    def __enter__(self):
        return sys.stdout

    def __exit__(self, *exc):
        return False


def _open_output(path: str | None):
    return open(path, "w", newline="", encoding="utf-8") if path else _Stdout()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minorage", description="Age estimation for minors and young adults, robust to eye occlusion.")
    parser.add_argument("--version", action="version", version=f"minorage {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="estimate ages for image files or folders")
    p.add_argument("paths", nargs="+", help="image files, or folders searched recursively for images")
    p.add_argument("--crops", action="store_true", help="each image is one face crop (no detection)")
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help=f"{MODEL_HELP} (default: %(default)s)")
    p.add_argument("--format", choices=FORMATS, default="jsonl", help="output rows (default: %(default)s)")
    p.add_argument("--output", "-o", help="write rows to this file instead of standard output")
    p.add_argument(
        "--face-fraction", type=float, default=1.0,
        help="with --crops: the share of each side of the crop that the face box covers; 1 = the whole "
        "crop is the face box, the model's margin is then added with repeated edge pixels (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=InferenceConfig.batch_size, help="faces per network call (default: %(default)s)")
    p.add_argument("--max-pixels", type=int, default=InferenceConfig.max_pixels, help="refuse larger images (default: %(default)s)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("info", help="describe a model: parameters, size, age range, framing, training metadata")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL_NAME, help=MODEL_HELP)
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"minorage {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""A model's minor flag chosen in scenes: the lowest threshold (from 17.5 up, in tenths of a
year) at which it flags at least as many minors as a reference model at its own flag, normal
and barred faces pooled, a face the detector misses counted as unflagged, both models reading
the same scenes and the same faces found (`minorage.paper.in_scenes.flag_like`). Prints JSON;
write the threshold into the card with `minorage combine MODEL --minor-below YEARS`.

    .venv/bin/python scripts/flag_in_scenes.py --model runs/scene-v8-half/model.safetensors --reference default \\
        --data runs/data/utkface-all-m20 --exclude runs/v8-adult-photos.txt --skip 1500
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from minorage import AgeEstimator
from minorage.config import DetectorConfig, InferenceConfig
from minorage.faces.detection import FaceDetector
from minorage.paper.in_scenes import flag_like


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the model whose flag is chosen")
    parser.add_argument("--reference", default="default", help="the model whose share of minors flagged it must reach (default: %(default)s)")
    parser.add_argument("--data", required=True, help="a data set from `minorage dataset build`")
    parser.add_argument("--exclude", help="a file of photo names or ids to leave out")
    parser.add_argument("--skip", type=int, default=0, help="start after the first K test photos by id (those that judge)")
    parser.add_argument("--photos", type=int, default=0, help="at most this many photos after them (default: all)")
    args = parser.parse_args()
    left_out = Path(args.exclude).read_text().split() if args.exclude else []
    detector = FaceDetector(DetectorConfig(factor=InferenceConfig.pyramid_factor))
    chosen = flag_like(AgeEstimator.from_pretrained(args.model), AgeEstimator.from_pretrained(args.reference), detector,
                       Path(args.data), left_out, args.photos, args.skip)
    print(json.dumps(chosen, indent=1))


if __name__ == "__main__":
    main()

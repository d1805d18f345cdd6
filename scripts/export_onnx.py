"""Export the shipped networks to ONNX beside their weights, for ONNX Runtime (`minorage.exported`).

Makes `pnet/rnet/onet.onnx` beside each of MTCNN's `.pt` files (stock and eye-bar-tuned) and
the exports of each age model shipped in the package (`default.onnx` / `default.edge.onnx`,
`blend.onnx` / `blend.edge.onnx` / `blend.opinion.onnx`), or those of the checkpoints given.
Each records the SHA-256 of its weights, so a network retrained or replaced afterwards runs in
PyTorch until this is run again. Needs the `onnx` package:

    .venv/bin/python -m pip install -e ".[import]"
    .venv/bin/python scripts/export_onnx.py [CHECKPOINT ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from minorage.exported import export
from minorage.faces.detection import shipped_weights_dir, stock_weights_dir
from minorage.faces.mtcnn import load_module
from minorage.model.card import packaged_models, weights_file
from minorage.model.runtime import export_parts

#: Per network: an example input, its outputs' names and which axes may vary (batch, and P-Net's image size).
MTCNN = {
    "pnet": (torch.zeros(1, 3, 24, 32), ["probability", "offsets"],
             {"x": {0: "n", 2: "height", 3: "width"}, "probability": {0: "n", 1: "rows", 2: "columns"}, "offsets": {0: "n", 2: "rows", 3: "columns"}}),
    "rnet": (torch.zeros(2, 3, 24, 24), ["logits", "offsets"], {"x": {0: "n"}, "logits": {0: "n"}, "offsets": {0: "n"}}),
    "onet": (torch.zeros(2, 3, 48, 48), ["logits", "offsets", "points"], {"x": {0: "n"}, "logits": {0: "n"}, "offsets": {0: "n"}, "points": {0: "n"}}),
}


def export_mtcnn() -> list[Path]:
    written = []
    for folder in (stock_weights_dir(), shipped_weights_dir()):
        for name, (example, outputs, dynamic) in MTCNN.items():
            source = folder / f"{name}.pt"
            if source.is_file():
                written.append(export(load_module(name, source), example, source.with_suffix(".onnx"), source, outputs, dynamic))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", type=Path, help="age models to export (default: MTCNN's networks and the shipped age models)")
    args = parser.parse_args()
    written = [p for c in args.checkpoints for p in export_parts(weights_file(c))] if args.checkpoints \
        else export_mtcnn() + [p for name in packaged_models() for p in export_parts(weights_file(name))]
    for path in written:
        print(path)


if __name__ == "__main__":
    main()

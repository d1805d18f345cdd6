"""Age model speed and memory: training seconds per epoch, inference faces/s at batch 1 and
256 on 2 threads, peak memory; and the bound the CPU's arithmetic puts on the speed.

Inference is timed as `AgeEstimator.predict` runs it (for a model with current ONNX exports, as the
default has, those in ONNX Runtime on one thread; `predict_runs` says which), as its PyTorch
runtime runs it on 2 threads (BatchNorms folded, TorchScript-frozen so that oneDNN fuses each
convolution with its activation, 32-face slices) and, for comparison, as the folded network run
eagerly on whole batches (what `predict` ran until 2026-11-29).

    .venv/bin/python benchmarks/age_model.py [--model default] [--data DIR] [--int8] [--onnx]

With --data, one training epoch of the default model's recipe (configs/default.json) is timed on
that data set's training split, and the model's MAE on its test split (Org and Ocl, ages 0-25)
is printed beside the speed. With --int8, the same for an int8 copy of the model (PyTorch's x86
static quantisation of the convolution streams, calibrated on 1,024 faces, run eagerly on whole
batches), and what it costs in MAE. With --onnx, the same folded network exported to ONNX and
run by ONNX Runtime (fp32, and int8 convolutions calibrated as above) and OpenVINO (fp32, bf16, and
the int8 graph), each in the runtime's 32-face slices: the other CPU runtimes that use AVX-512's
int8 and bf16 instructions. They are not the package's dependencies; install them beside it
(`.venv/bin/pip install onnx onnxruntime openvino`); a runtime that is missing is reported so.

Every run also times a 2048x2048 matrix product in fp32, bf16 and int8 on the same threads and
divides it by the model's multiply-adds per face: the faces/s the model would reach if all its
arithmetic ran as fast as PyTorch's large matrix product in each precision, about the most any
runtime can get (a near bound, not an exact one: on the Zen 5 machine of 2026-11-29, ONNX Runtime's fp32
ran v8 up to 10 % faster than this product's fp32 speed). The issue's 5,000 faces/s
assumed AMX; the report says whether the CPU has it.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from minorage import AgeEstimator, config
from minorage.model.network import AveragedNetwork
from minorage.model.runtime import RUNTIME_SLICE, predict_ages
from minorage.paper.metrics import mae
from minorage.paper.store import load_faces

Predictor = Callable[[np.ndarray, int], np.ndarray]  # uint8 NHWC faces, batch size -> ages


def calls_per_second(call: Callable[[], object], seconds: float) -> float:
    """`call()` repeated for `seconds`, after one warm-up call."""
    call()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        done += 1
    return done / (time.perf_counter() - start)


def faces_per_second(predict, faces: np.ndarray, batch: int, seconds: float = 3.0) -> float:
    """`predict(faces, batch_size)` timed on repeated batches."""
    return batch * calls_per_second(lambda: predict(faces[:batch], batch), seconds)


def int8_copy(net: torch.nn.Module, calibration: np.ndarray) -> torch.nn.Module:
    """The network with its two convolution streams (nearly all of its multiply-adds) in int8
    on the x86 engine, activation ranges observed on `calibration` faces; the stage heads and
    the soft stagewise sum stay in float, where int8 would round the age itself."""
    import copy

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    net = copy.deepcopy(net).eval()
    batches = torch.from_numpy(calibration).permute(0, 3, 1, 2).float().split(128)
    with warnings.catch_warnings(), torch.no_grad():  # PyTorch says this API moves to torchao; it still works
        warnings.simplefilter("ignore")
        for member in net.members if isinstance(net, AveragedNetwork) else [net]:
            for name in ("x_stream", "s_stream"):
                prepared = prepare_fx(getattr(member, name), get_default_qconfig_mapping("x86"), (batches[0],))
                for batch in batches:
                    prepared(batch)
                setattr(member, name, convert_fx(prepared))
    return net


def onnx_predictors(net: torch.nn.Module, calibration: np.ndarray, folder: Path, max_age: float | None) -> dict[str, Predictor | str]:
    """The network exported to ONNX and run by each CPU runtime that is installed (else why not).

    Why: PyTorch's own int8 and bf16 paths were slower than its fp32 runtime here; these runtimes
    bring their own int8 and bf16 kernels for AVX-512 (VNNI, BF16) and AMX."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime  # noqa: F401  (its quantiser writes the int8 graph both runtimes read)
    except ImportError as missing:
        return {missing.name: "not installed"}
    plain, int8 = folder / "model.onnx", folder / "model-int8.onnx"
    export_onnx(net, plain, int8, calibration)
    found: dict[str, Predictor | str] = onnxruntime_predictors(plain, int8, max_age)
    try:
        found.update(openvino_predictors(plain, int8, max_age))
    except ImportError:
        found["openvino"] = "not installed"
    return found


def export_onnx(net: torch.nn.Module, plain: Path, int8: Path, calibration: np.ndarray) -> None:
    """The folded network as fp32 ONNX, and a copy whose convolutions are int8 (weights per
    channel, activation ranges observed on the calibration faces; the rest stays in float)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(RUNTIME_SLICE, 3, 64, 64), str(plain), input_names=["x"], output_names=["age"],
                          dynamic_axes={"x": {0: "n"}, "age": {0: "n"}}, dynamo=False, opset_version=17)

    class Faces(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter({"x": nchw(part)} for part in np.array_split(calibration, max(1, len(calibration) // 128)))

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    quantize_static(str(plain), str(int8), Faces(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"])


def onnxruntime_predictors(plain: Path, int8: Path, max_age: float | None) -> dict[str, Predictor | str]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
    found: dict[str, Predictor | str] = {}
    for name, path in (("onnxruntime_fp32", plain), ("onnxruntime_int8", int8)):
        runner = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        found[name] = sliced(lambda x, s=runner: s.run(None, {"x": x})[0], max_age)
    return found


def openvino_predictors(plain: Path, int8: Path, max_age: float | None) -> dict[str, Predictor | str]:
    import openvino

    core = openvino.Core()
    found: dict[str, Predictor | str] = {}
    for name, path, precision in (("openvino_fp32", plain, "f32"), ("openvino_bf16", plain, "bf16"), ("openvino_int8", int8, "f32")):
        model = core.read_model(str(path))
        model.reshape({"x": [RUNTIME_SLICE, 3, 64, 64]})
        request = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                                    "INFERENCE_PRECISION_HINT": precision}).create_infer_request()
        found[name] = sliced(lambda x, r=request: r.infer({0: x})[0].copy(), max_age)
    return found


def nchw(faces: np.ndarray) -> np.ndarray:
    """uint8 NHWC faces as the network's float32 NCHW input."""
    return np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32)


def sliced(run: Callable[[np.ndarray], np.ndarray], max_age: float | None) -> Predictor:
    """A predictor that feeds `run` fixed slices of RUNTIME_SLICE faces (the last one padded), as
    the package's runtime does, whatever the batch it is handed."""

    def predict(faces: np.ndarray, _batch: int) -> np.ndarray:
        ages = []
        for start in range(0, len(faces), RUNTIME_SLICE):
            part = nchw(faces[start : start + RUNTIME_SLICE])
            padded = np.concatenate([part, np.zeros((RUNTIME_SLICE - len(part), *part.shape[1:]), np.float32)])
            ages.append(np.asarray(run(padded)).reshape(-1)[: len(part)])
        out = np.concatenate(ages).astype(np.float32)
        return out if max_age is None else np.minimum(out, np.float32(max_age))

    return predict


def multiply_adds(net: torch.nn.Module) -> int:
    """Multiply-adds of one forward pass on one 64x64 face (convolutions and dense layers)."""
    counted: list[int] = []

    def count(module: torch.nn.Module, _inputs, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv2d):
            counted.append(output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1] // module.groups)
        elif isinstance(module, torch.nn.Linear):
            counted.append(module.in_features * module.out_features)

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        net(torch.zeros(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    return sum(counted)


def matmul_ops_per_second(dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """Operations (a multiply-add is two) per second of a large square matrix product in `dtype`
    on the set threads: about the best this CPU's arithmetic does in that precision."""
    if dtype == torch.int8:
        a = torch.randint(-128, 128, (size, size), dtype=torch.int8)
        product = lambda: torch._int_mm(a, a)  # noqa: E731  # int8 x int8 -> int32 (VNNI or AMX)
    else:
        a = torch.randn(size, size).to(dtype)
        product = lambda: a @ a  # noqa: E731
    return 2 * size**3 * calls_per_second(product, seconds)


def amx_flags() -> list[str]:
    """The CPU's AMX features as Linux lists them (none on a CPU without AMX, or off Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text().split() if cpuinfo.exists() else []
    return sorted({f for f in flags if f.startswith("amx")})


def arithmetic_ceiling(multiply_adds_per_face: int) -> dict[str, object]:
    """The CPU's matrix-product speed in fp32, bf16 and int8, and the faces/s that each would give
    the model if every one of its multiply-adds ran that fast: about the most any runtime can get
    out of the model in that precision, since its small convolutions use the arithmetic less well."""
    out: dict[str, object] = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "amx": amx_flags() or "none"}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("int8", torch.int8)):
        try:
            ops = matmul_ops_per_second(dtype)
        except RuntimeError as error:  # an int8 product this CPU or build has no kernel for
            out[f"{name}_matmul"] = f"not available: {error}"
            continue
        out[f"{name}_matmul_gops"] = round(ops / 1e9)
        out[f"{name}_faces_per_s_at_matmul_speed"] = round(ops / (2 * multiply_adds_per_face))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", help="a data set folder for the training epoch and the MAE check")
    parser.add_argument("--int8", action="store_true", help="also time and check an int8 copy of the model")
    parser.add_argument("--onnx", action="store_true", help="also time and check ONNX Runtime and OpenVINO, if installed")
    args = parser.parse_args()
    torch.set_num_threads(2)
    estimator = AgeEstimator.from_pretrained(args.model)
    faces = np.load(config.ssrnet_fixture())["images"]
    faces = np.concatenate([faces] * 4)  # 256 real faces
    macs = multiply_adds(estimator.net)
    report = {"model": args.model, "threads": torch.get_num_threads(), "million_multiply_adds_per_face": round(macs / 1e6, 2),
              **arithmetic_ceiling(macs)}
    report["predict_runs"] = "its ONNX exports in ONNX Runtime, one thread" if estimator.runs_exported else "PyTorch"
    runtime = lambda x, batch: estimator.predict(x, batch_size=batch)  # noqa: E731
    in_pytorch = lambda x, batch: predict_ages(estimator.runtime, x, batch, estimator.card.max_age)
    eager = estimator.runtime.folded  # the runtime's own folded copy, run on whole batches
    for batch in (1, 256):
        report[f"faces_per_s_batch_{batch}"] = round(faces_per_second(runtime, faces, batch), 1)
        report[f"pytorch_faces_per_s_batch_{batch}"] = round(faces_per_second(in_pytorch, faces, batch), 1)
        report[f"eager_faces_per_s_batch_{batch}"] = round(faces_per_second(
            lambda x, b: predict_ages(eager, x, b, estimator.card.max_age), faces, batch), 1)
    predictors = {"": runtime}
    if args.int8 or args.onnx:  # the int8 copies' activation ranges are observed on these faces
        calibration = load_faces(Path(args.data), "train", "org").faces[:1024] if args.data else faces
    if args.int8:
        quantised = int8_copy(estimator.net, calibration)
        max_age = estimator.card.max_age
        predictors["int8_"] = lambda x, batch: predict_ages(quantised, x, batch, max_age)  # noqa: E731
        report["int8_faces_per_s_batch_256"] = round(faces_per_second(predictors["int8_"], faces, 256), 1)
    if args.onnx:
        with tempfile.TemporaryDirectory() as folder:
            for name, found in onnx_predictors(estimator.runtime.folded, calibration, Path(folder), estimator.card.max_age).items():
                if isinstance(found, str):
                    report[name] = found
                    continue
                predictors[f"{name}_"] = found
                report[f"{name}_faces_per_s_batch_256"] = round(faces_per_second(found, faces, 256), 1)
                report[f"{name}_max_age_difference"] = round(float(np.abs(found(faces, 256) - runtime(faces, 256)).max()), 4)
    if args.data:
        from minorage.config import TrainConfig
        from minorage.paper.training import train

        for variant in ("org", "ocl"):
            test = load_faces(Path(args.data), "test", variant)
            young = test.ages <= 25
            for prefix, predict in predictors.items():
                report[f"{prefix}test_mae_{variant}_ages_0_25"] = round(mae(test.ages[young], predict(test.faces[young], 256)), 4)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as run:
            recipe = json.loads((Path(__file__).parent.parent / "configs" / "default.json").read_text())
            train(Path(args.data), Path(run), TrainConfig.from_dict({**recipe, "epochs": 1}), progress=False)
        report["training_seconds_per_epoch"] = round(time.perf_counter() - start, 1)
    report["peak_memory_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

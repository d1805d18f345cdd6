"""SSR-Net (Yang et al., IJCAI 2018) in PyTorch, and the average of several age networks.

The network is the released 3-3-3 model: two convolution streams (ReLU + average pooling, tanh
+ max pooling), three stage heads that each output a soft distribution `p` over `s` bins, a
shift `eta` of each bin (local, "lambda_local") and a scale `delta` of the stage's bin width
("lambda_d"); the soft stagewise regression merges them into an age in [0, V).

Input: uint8 (N, 64, 64, 3), BGR as OpenCV reads it, raw 0..255 values, exactly as the original
Keras model was fed; no normalisation.
"""

from __future__ import annotations

import torch
from torch import nn

from minorage.config import ResNetConfig, SSRNetConfig
from minorage.model.resnet import AgeResNet


def _conv_block(c_in: int, c_out: int, act: nn.Module) -> nn.Sequential:
    # Keras BatchNormalization: epsilon 1e-3, moving average 0.99
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3), nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01), act)


class _Stream(nn.Module):
    """Four 3x3 conv blocks, pooled after the first three; returns the maps the stages read."""

    def __init__(self, channels: int, act: type[nn.Module], pool: type[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(
            [_conv_block(3 if i == 0 else channels, channels, act()) for i in range(4)]
        )
        self.pool = pool(2, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        layer1 = self.pool(self.blocks[0](x))
        layer2 = self.pool(self.blocks[1](layer1))
        top = self.blocks[3](self.pool(self.blocks[2](layer2)))
        return layer1, layer2, top


class _StageHead(nn.Module):
    """One stage: fuse the two streams' features into (p, delta, eta) over `bins` bins."""

    def __init__(self, bins: int, feat_dim: int, pool: int):
        super().__init__()
        self.s_conv = nn.Conv2d(16, 10, 1)
        self.x_conv = nn.Conv2d(32, 10, 1)
        self.s_pool = nn.MaxPool2d(pool, pool) if pool > 1 else nn.Identity()
        self.x_pool = nn.AvgPool2d(pool, pool) if pool > 1 else nn.Identity()
        self.dropout = nn.Dropout(0.2)
        self.s_fc = nn.Linear(feat_dim, bins)
        self.x_fc = nn.Linear(feat_dim, bins)
        self.delta = nn.Linear(feat_dim, 1)
        self.feat = nn.Linear(bins, 2 * bins)
        self.pred = nn.Linear(2 * bins, bins)
        self.local = nn.Linear(2 * bins, bins)

    def forward(self, s: torch.Tensor, x: torch.Tensor):
        s = self.s_pool(torch.relu(self.s_conv(s))).flatten(1)
        x = self.x_pool(torch.relu(self.x_conv(x))).flatten(1)
        delta = torch.tanh(self.delta(s * x))
        mix = torch.relu(self.s_fc(self.dropout(s))) * torch.relu(self.x_fc(self.dropout(x)))
        feat = torch.relu(self.feat(mix))
        # the released code uses ReLU here, not the softmax of the paper's text
        p = torch.relu(self.pred(feat))
        eta = torch.tanh(self.local(feat))
        return p, delta, eta


class SSRNet(nn.Module):
    """Soft Stagewise Regression Network; `forward` takes float NCHW BGR 0..255, returns years."""

    def __init__(self, cfg: SSRNetConfig = SSRNetConfig()):
        super().__init__()
        if cfg.image_size != 64:
            raise ValueError("SSR-Net's stage heads are sized for 64x64 inputs")
        self.cfg = cfg
        self.x_stream = _Stream(32, nn.ReLU, nn.AvgPool2d)
        self.s_stream = _Stream(16, nn.Tanh, nn.MaxPool2d)
        s1, s2, s3 = cfg.stages
        # stage 1 reads the top maps (4x4), stage 2 layer2 (14x14 -> 3x3), stage 3 layer1 (31 -> 3)
        self.stages = nn.ModuleList(
            [_StageHead(s1, 160, 1), _StageHead(s2, 90, 4), _StageHead(s3, 90, 8)]
        )
        self.register_buffer("bin_index", torch.arange(max(cfg.stages), dtype=torch.float32), persistent=False)

    def stage_outputs(self, x: torch.Tensor):
        """(p, delta, eta) of stages 1..3, for losses that look inside the regression."""
        x1, x2, x_top = self.x_stream(x)
        s1, s2, s_top = self.s_stream(x)
        return [self.stages[0](s_top, x_top), self.stages[1](s2, x2), self.stages[2](s1, x1)]

    def merge(self, outputs) -> torch.Tensor:
        """Soft stagewise regression: age = V * sum_k sum_i (i + l*eta_ki) p_ki / prod_j s_j(1+d*delta_j)."""
        cfg = self.cfg
        age, width = 0.0, 1.0
        for (p, delta, eta), bins in zip(outputs, cfg.stages):
            # (1 + delta) reaches 0 only when tanh saturates at -1 (untrained nets): keep it finite
            width = width * bins * (1 + cfg.lambda_d * delta[:, 0]).clamp_min(1e-6)
            index = self.bin_index[:bins]
            age = age + ((index + cfg.lambda_local * eta) * p).sum(dim=1) / width
        return age * cfg.V

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(self.stage_outputs(x))


class AveragedNetwork(nn.Module):
    """Several age networks of one architecture (e.g. the Org and the Ocl model, the paper's
    future work), optionally each also on the mirrored face; the age is the mean of all their
    outputs."""

    def __init__(self, members: list[nn.Module], mirror: bool = False):
        super().__init__()
        if not members or len({m.cfg for m in members}) != 1:
            raise ValueError("an ensemble needs one or more networks of the same configuration")
        self.members = nn.ModuleList(members)
        self.mirror = mirror
        self.cfg = members[0].cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return averaged(self.members, self.mirror, x)


def averaged(members: nn.ModuleList, mirror: bool, x: torch.Tensor) -> torch.Tensor:
    """The mean of every member's ages for the faces, and for their mirror images with `mirror`."""
    views = [x, x.flip(3)] if mirror else [x]
    return torch.stack([m(v) for m in members for v in views]).mean(dim=0)


#: a face whose three channels lie this close on average (0..255) is read as black and white: a
#: grayscale photo reads with equal channels, one saved again as a colour JPEG within about one level
BLACK_AND_WHITE_SPREAD = 2.0


def is_black_and_white(x: torch.Tensor) -> torch.Tensor:
    """(N,) True for the float NCHW faces whose three channels are one gray image."""
    return (x.amax(dim=1) - x.amin(dim=1)).mean(dim=(1, 2)) < BLACK_AND_WHITE_SPREAD


def route(x: torch.Tensor, colour: nn.Module, grayscale: nn.Module) -> torch.Tensor:
    """Each face's age from the network made for how it looks: black-and-white faces from
    `grayscale`, the others from `colour` (each network runs only on its own faces)."""
    gray = is_black_and_white(x)
    if not bool(gray.any()):
        return colour(x)
    if bool(gray.all()):
        return grayscale(x)
    out = x.new_empty(len(x))
    out[~gray] = colour(x[~gray])
    out[gray] = grayscale(x[gray])
    return out


class ByLookNetwork(nn.Module):
    """A colour model and a specialist for black-and-white faces behind one call. Why: networks
    that learnt on colour photos read grayscale ones markedly worse, and a short fine-tune that
    must keep colour faces as they were cannot close that gap (docs/model-history.md, steps 8
    and 9); a seized collection holds many black-and-white photos."""

    def __init__(self, colour: nn.Module, grayscale: nn.Module):
        super().__init__()
        if colour.cfg != grayscale.cfg:
            raise ValueError("the grayscale specialist must have the colour model's architecture")
        self.colour, self.grayscale = colour, grayscale
        self.cfg = colour.cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return route(x, self.colour, self.grayscale)


class ByFrameNetwork(nn.Module):
    """A model with a part of its own for the faces whose frame leaves the photo. Why: networks
    fine-tuned on faces with real surroundings read faces in photos better, and the faces whose
    frame the photo's edge filled (as in every stored UTKFace face) worse, than the network they
    started from (docs/model-history.md, steps 14-18). Which face is which is known when it is
    framed (`framing.frame_routed`), not from its pixels, so `AgeEstimator.predict` takes the
    route; called on faces alone, with no frame known, the main part reads them."""

    def __init__(self, main: nn.Module, edge: nn.Module):
        super().__init__()
        if main.cfg.image_size != edge.cfg.image_size:
            raise ValueError("the edge part must take faces of the main part's size")
        self.main, self.edge = main, edge
        self.cfg = main.cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class SecondOpinionNetwork(nn.Module):
    """A model and a second age network that may lift its flag on faces with open eyes. Why: a
    network trained on other photos, reading faces aligned as it learnt them, clears many of the
    adults the model flags in photos (docs/model-history.md, step 23). It reads its own chips
    (`framing.template_chip`), so `AgeEstimator` runs it apart; called on faces alone, the model
    reads them."""

    def __init__(self, model: nn.Module, opinion: nn.Module):
        super().__init__()
        self.model, self.opinion = model, opinion
        self.cfg = model.cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def build_network(cfg: SSRNetConfig | ResNetConfig) -> nn.Module:
    """An untrained network of the architecture a configuration describes."""
    return AgeResNet(cfg) if isinstance(cfg, ResNetConfig) else SSRNet(cfg)

"""Augmentation of uint8 face batches in torch (no torchvision): the margin beyond the source
photo filled from a face-free picture; flips, shifts, zooms, light and colour; the look of seized
photos (grayscale, sepia, low resolution, heavy JPEG, blur, noise, turns, off-centre and cut
faces); and occluders other than the paper's bar.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch import nn

from minorage.config import TrainConfig
from minorage.faces.wild import LUMA_BGR, SEPIA_BGR, jpeg_round_trip

# ---------------------------------------------------------------------------------------------
# The face in a scene: what lies beyond the source photo


def scene_patches(pictures: list[np.ndarray], count: int, size: int, seed: int) -> torch.Tensor:
    """(count, 3, size, size) uint8 BGR: square cut-outs of the pictures at random places and
    scales (a tenth to the whole of the shorter side), each resized to the frame."""
    rng = np.random.default_rng(seed)
    patches = []
    for _ in range(count):
        picture = pictures[rng.integers(len(pictures))]
        h, w = picture.shape[:2]
        side = int(rng.uniform(0.1, 1.0) * min(h, w))
        y, x = rng.integers(h - side + 1), rng.integers(w - side + 1)
        patches.append(cv2.resize(picture[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA))
    return torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).contiguous()


def in_scene(batch: torch.Tensor, extents: torch.Tensor, patches: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """A `share` of the faces with their frame beyond the source photo (`extents`, (N, 4) x0, y0,
    x1, y1 in pixels) taken from a random patch, the photo's rim blended over one pixel.

    Why: the stored faces were framed from chips whose margin the build filled with the chip's
    own edge pixels; a face in a real photo has hair, shoulders and a room around it, and
    networks that never saw such a margin read it as part of the face."""
    n, _, h, w = batch.shape
    hit = torch.rand(n, generator=generator) < share
    pick = torch.randint(0, len(patches), (n,), generator=generator)
    xs, ys = torch.arange(w).view(1, w) + 0.5, torch.arange(h).view(1, h) + 0.5
    across = ((xs - extents[:, 0:1] + 0.5).clamp(0, 1) * (extents[:, 2:3] - xs + 0.5).clamp(0, 1)).view(n, 1, 1, w)
    down = ((ys - extents[:, 1:2] + 0.5).clamp(0, 1) * (extents[:, 3:4] - ys + 0.5).clamp(0, 1)).view(n, 1, h, 1)
    photo = torch.where(hit.view(n, 1, 1, 1), across * down, torch.ones(n, 1, 1, 1))
    return batch * photo + patches[pick].float() * (1 - photo)


# ---------------------------------------------------------------------------------------------
# Augmentation on uint8 batches, in torch (no torchvision)


def augment(batch: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Float NCHW 0..255 in, the same out: random flip, shift, zoom, small turn, brightness,
    contrast and colour balance, and (with `occluders`) a random black rectangle."""
    n = batch.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    if cfg.augment:
        angle = (u(n) - 0.5) * math.radians(20)
        scale = 1 + (u(n) - 0.5) * 0.2
        flip = torch.where(u(n) < 0.5, -1.0, 1.0)
        shift = (u(n, 2) - 0.5) * 0.16
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
        grid = nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
        batch = nn.functional.grid_sample(batch, grid, padding_mode="border", align_corners=False)
        contrast = 1 + (u(n, 1, 1, 1) - 0.5) * 0.5
        brightness = (u(n, 1, 1, 1) - 0.5) * 50
        colour = 1 + (u(n, 3, 1, 1) - 0.5) * 0.16
        mean = batch.mean(dim=(1, 2, 3), keepdim=True)
        batch = ((batch - mean) * contrast + mean + brightness) * colour
    if cfg.robust:
        batch = seized_look(batch, cfg.robust, generator)
    if cfg.occluders:
        batch = (_varied_occluders if cfg.varied_occluders else _random_occluders)(batch, cfg.occluders, generator)
    if cfg.grayscale:
        batch = luma(batch)
    return batch.clamp(0, 255)


def seized_look(batch: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """A `share` of the faces degraded as seized photos are (one of grayscale, sepia, low
    resolution, heavy JPEG, blur, noise), and apart a `share` turned by up to 30 degrees,
    shifted by up to a quarter and zoomed, the frame's edge repeated where the face leaves it.
    Why: the model has seen only UTKFace's aligned colour chips; a collection holds anything."""
    n = batch.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    kind = torch.randint(0, 6, (n,), generator=generator)
    hit = u(n) < share
    out = batch.clone()
    grey = batch.mean(dim=1, keepdim=True).expand_as(batch)
    out = torch.where((hit & (kind == 0)).view(n, 1, 1, 1), grey, out)
    sepia = torch.einsum("ij,njhw->nihw", _SEPIA, batch)
    out = torch.where((hit & (kind == 1)).view(n, 1, 1, 1), sepia, out)
    for k in torch.nonzero(hit & (kind == 2)).flatten().tolist():  # a face of 12-32 px, enlarged
        side = int(12 + 20 * u(1))
        small = nn.functional.interpolate(batch[k : k + 1], size=(side, side), mode="area")
        out[k] = nn.functional.interpolate(small, size=batch.shape[2:], mode="bilinear", align_corners=False)[0]
    for k in torch.nonzero(hit & (kind == 3)).flatten().tolist():
        out[k] = _jpeg(batch[k], int(10 + 40 * u(1)))
    blurred = nn.functional.avg_pool2d(nn.functional.pad(batch, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    out = torch.where((hit & (kind == 4)).view(n, 1, 1, 1), blurred, out)
    noisy = batch + torch.randn(batch.shape, generator=generator) * (4 + 12 * u(n, 1, 1, 1))
    out = torch.where((hit & (kind == 5)).view(n, 1, 1, 1), noisy, out)
    turn = u(n) < share
    angle = (u(n) - 0.5) * math.radians(60) * turn
    scale = 1 + (u(n) - 0.5) * 0.4 * turn
    shift = (u(n, 2) - 0.5) * 0.5 * turn.view(n, 1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = nn.functional.affine_grid(theta, list(out.shape), align_corners=False)
    return nn.functional.grid_sample(out, grid, padding_mode="border", align_corners=False)


_SEPIA = torch.from_numpy(SEPIA_BGR)  # BGR -> BGR


def luma(batch: torch.Tensor) -> torch.Tensor:
    """Float NCHW BGR faces in black and white (OpenCV's luma in all three channels), as a
    grayscale photo reads."""
    gray = torch.einsum("c,nchw->nhw", torch.from_numpy(LUMA_BGR), batch).unsqueeze(1)
    return gray.expand_as(batch).contiguous()


def _jpeg(face: torch.Tensor, quality: int) -> torch.Tensor:
    """One CHW float face through a JPEG encoder at this quality and back."""
    image = face.clamp(0, 255).byte().permute(1, 2, 0).contiguous().numpy()
    return torch.from_numpy(jpeg_round_trip(image, quality)).permute(2, 0, 1).float()


def _random_occluders(batch: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """Black rectangles of random size and place on a share of the faces (bars elsewhere than
    the eyes, masks, hands): the model must not rely on any one region."""
    n, _, h, w = batch.shape
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    hit = u(n) < share
    bw, bh = (0.3 + 0.7 * u(n)) * w, (0.1 + 0.3 * u(n)) * h
    x0, y0 = u(n) * (w - bw), u(n) * (h - bh)
    return batch.masked_fill(_inside(x0, y0, bw, bh, hit, h, w), 0.0)


def _inside(x0: torch.Tensor, y0: torch.Tensor, bw: torch.Tensor, bh: torch.Tensor, hit: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, 1, H, W): the pixels inside each face's rectangle, for the faces hit."""
    n = len(hit)
    xs, ys = torch.arange(w).view(1, 1, w), torch.arange(h).view(1, h, 1)
    inside = (xs >= x0.view(n, 1, 1)) & (xs < (x0 + bw).view(n, 1, 1)) & (ys >= y0.view(n, 1, 1)) & (ys < (y0 + bh).view(n, 1, 1))
    return (inside & hit.view(n, 1, 1)).unsqueeze(1)


def _varied_occluders(batch: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """On a share of the faces, one occluder: a black block (as `_random_occluders`), a flat
    skin- or hair-coloured patch (a hand, hair), or the band of the eyes blurred, pixelated or
    darkened (dark glasses): eyes are hidden by more than a black bar."""
    n, _, h, w = batch.shape
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    hit, kind = u(n) < share, torch.randint(0, 3, (n,), generator=generator)
    eyes = kind == 2  # the framed face's eyes lie about 0.3-0.5 down its frame
    bw = torch.where(eyes, torch.full((n,), 0.8 * w), (0.3 + 0.7 * u(n)) * w)
    bh = torch.where(eyes, torch.full((n,), 0.18 * h), (0.1 + 0.3 * u(n)) * h)
    x0 = torch.where(eyes, torch.full((n,), 0.1 * w), u(n) * (w - bw))
    y0 = torch.where(eyes, (0.3 + 0.08 * u(n)) * h, u(n) * (h - bh))
    colour = torch.where((kind == 1).view(n, 1), 40 + 180 * u(n, 1) * torch.tensor([[0.55, 0.7, 1.0]]), torch.zeros(n, 3))
    pixelated = nn.functional.interpolate(nn.functional.avg_pool2d(batch, 8), size=(h, w), mode="nearest")
    blurred = nn.functional.avg_pool2d(nn.functional.pad(batch, (3, 3, 3, 3), mode="replicate"), 7, stride=1)
    eye_cover = torch.stack([pixelated, blurred, batch * 0.15])[torch.randint(0, 3, (n,), generator=generator), torch.arange(n)]
    hidden = torch.where(eyes.view(n, 1, 1, 1), eye_cover, colour.view(n, 3, 1, 1).expand_as(batch))
    return torch.where(_inside(x0, y0, bw, bh, hit, h, w), hidden, batch)

"""The paper's bulky baseline (§4, Fig. 6): DEX (Rothe et al.), VGG-16 with a softmax over the
ages 0-25 whose expected value is the age.

DEX starts from ImageNet VGG-16 weights; none are available offline here, so this one is
trained from scratch, with batch normalisation after every convolution (plain VGG-16 does not
train from scratch in a few epochs) and at a smaller input than 224 px, which two CPU cores can
afford: the 64x64 faces of the data set are resized inside the network to `image_size`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from minorage.config import DexConfig, TrainConfig
from minorage.model.runtime import predict_ages
from minorage.paper import metrics
from minorage.paper.augment import augment
from minorage.paper.store import load_faces
from minorage.paper.training import sample_weights, validation_mask

#: VGG-16's convolutions: channels, "M" for a 2x2 max-pool
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class DexNet(nn.Module):
    """VGG-16 (+BN) on BGR faces 0..255 (N, 3, 64, 64): forward gives the expected age."""

    def __init__(self, cfg: DexConfig = DexConfig()):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        channels = 3
        for spec in VGG16_LAYERS:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, spec, 3, padding=1), nn.BatchNorm2d(spec), nn.ReLU(inplace=True)]
                channels = spec
        self.features = nn.Sequential(*layers)
        side = cfg.image_size // 32
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(512 * side * side, cfg.fc_width), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(cfg.fc_width, cfg.fc_width), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(cfg.fc_width, cfg.classes),
        )
        self.register_buffer("ages", torch.arange(cfg.classes, dtype=torch.float32), persistent=False)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x / 255.0, size=self.cfg.image_size, mode="bilinear", antialias=True, align_corners=False)
        return self.classifier(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.logits(x).softmax(dim=1) * self.ages).sum(dim=1)


def train_dex(data_dir: Path, out_dir: Path, cfg: DexConfig = DexConfig(), progress: bool = True) -> tuple[DexNet, dict]:
    """Train DEX on a data set's training split (ages 0-25, the same 80/20 validation as SSR-Net,
    the same augmentation), keep the best validation epoch; writes dex.safetensors + dex.json."""
    from safetensors.torch import load_file, save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    data = load_faces(Path(data_dir), "train", cfg.variant)
    if cfg.per_age:
        data = data.cap_per_age(cfg.per_age, cfg.seed)
    data = data.subset(data.ages <= cfg.classes - 1)
    shared = TrainConfig(augment=True, balance=True, seed=cfg.seed)  # the SSR-Net run's split, sampling and augmentation
    val_mask = validation_mask(data.ids, shared.val_fraction, shared.val_seed)
    fit, val = data.subset(~val_mask), data.subset(val_mask)
    weights = torch.from_numpy(sample_weights(fit.ages, shared))
    fit_faces, fit_classes = torch.from_numpy(fit.faces).permute(0, 3, 1, 2), torch.from_numpy(np.rint(fit.ages).astype(np.int64))
    net = DexNet(cfg).to(memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    history, best, started = [], None, time.time()
    for epoch in tqdm(range(cfg.epochs), desc="DEX epochs", disable=not progress):
        net.train()
        order = torch.multinomial(weights, len(weights), replacement=True, generator=generator)
        steps = range(0, len(order) - 1, cfg.batch_size)
        for start in tqdm(steps, desc=f"epoch {epoch + 1}", leave=False, disable=not progress):
            index = order[start : start + cfg.batch_size]
            batch = augment(fit_faces[index].float(), shared, generator).contiguous(memory_format=torch.channels_last)
            loss = nn.functional.cross_entropy(net.logits(batch), fit_classes[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        val_mae = metrics.mae(val.ages, predict_ages(net, val.faces, 256))
        history.append({"epoch": epoch + 1, "val_mae": val_mae})
        if best is None or val_mae < best["val_mae"]:
            best = history[-1]
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out_dir / "dex.safetensors"))
    net.load_state_dict(load_file(str(out_dir / "dex.safetensors")))
    card = {"config": asdict(cfg), "faces_fit": len(fit), "faces_val": len(val), "history": history, "best": best,
            "parameters": sum(p.numel() for p in net.parameters()), "size_bytes": (out_dir / "dex.safetensors").stat().st_size,
            "seconds": round(time.time() - started, 1),
            "note": "VGG-16 with batch normalisation, trained from scratch (no ImageNet weights offline)"}
    (out_dir / "dex.json").write_text(json.dumps(card, indent=2) + "\n")
    return net.eval(), card

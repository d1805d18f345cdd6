"""Choosing an ensemble's members on validation photos they all left out, and measuring the
ensemble there (the test split never takes part in the choice).
"""

from __future__ import annotations

import itertools
from dataclasses import fields
from pathlib import Path

import numpy as np
from torch import nn

from minorage.config import TrainConfig
from minorage.model.card import ModelCard
from minorage.model.checkpoint import load_checkpoint
from minorage.model.ensemble import combine_checkpoints, member_cards
from minorage.model.network import AveragedNetwork
from minorage.model.runtime import predict_ages
from minorage.paper.training import fit_and_validation, validation_score, validation_scores


def _shared_validation(cards: list[ModelCard]) -> TrainConfig:
    """The training options that name the validation photos several models all left out:
    refused unless they were trained on the same data set with the same split."""
    cards = [m for c in cards for m in member_cards(c)]
    keys = {(c.data.get("dataset"), c.training.get("val_seed", 0), c.training.get("val_fraction")) for c in cards}
    if len(keys) != 1 or None in (key := keys.pop()):
        raise ValueError("the members were not validated on the same photos (data set, val_seed, val_fraction differ)")
    if key[2] == 0:
        raise ValueError("the members were fit on every training photo: no validation photos are left to measure them on")
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig.from_dict({k: v for k, v in cards[0].training.items() if k in known})


def validate_combined(net: nn.Module, member_cards: list[ModelCard], data_dir: Path) -> dict:
    """The validation measures of an ensemble on the photos its members all left out."""
    cfg = _shared_validation(member_cards)
    return validation_score(net, fit_and_validation(Path(data_dir), cfg)[1], cfg)


def choose_members(paths: list[Path], data_dir: Path, most: int, mirror: bool) -> tuple[list[Path], dict]:
    """Of the trained checkpoints given, the ensemble of at most `most` networks with the lowest
    MAE averaged over ages on their shared validation photos, and its scores. A checkpoint that
    is itself an ensemble (an earlier default model) is a candidate as a whole and counts its
    networks. The choice never sees the test split, so the test numbers of the chosen ensemble
    stay honest; on a tie the ensemble of fewer networks wins (it is faster)."""
    if most < 1:
        raise ValueError(f"the largest ensemble size must be 1 or more, got {most}")
    loaded = [load_checkpoint(Path(p)) for p in paths]
    cfg = _shared_validation([card for _, card in loaded])
    val = fit_and_validation(Path(data_dir), cfg)[1]
    views = [val.faces, np.ascontiguousarray(val.faces[:, :, ::-1])] if mirror else [val.faces]
    # an ensemble averages every member on every view: keep each checkpoint's sum and its networks
    sums, networks = [], []
    for net, _ in loaded:
        members = list(net.members) if isinstance(net, AveragedNetwork) else [net]
        sums.append(sum(predict_ages(m, v, 512) for m in members for v in views))
        networks.append(len(members))
    subsets = [s for size in range(1, min(most, len(paths)) + 1) for s in itertools.combinations(range(len(paths)), size)
               if sum(networks[i] for i in s) <= most]
    if not subsets:
        raise ValueError(f"every model given averages more than {most} networks")
    best: tuple[tuple[int, ...], dict] | None = None
    for subset in sorted(subsets, key=lambda s: sum(networks[i] for i in s)):
        pred = sum(sums[i] for i in subset) / (sum(networks[i] for i in subset) * len(views))
        score = validation_scores(val.ages, pred, cfg)
        if best is None or score["val_mae_age_averaged"] < best[1]["val_mae_age_averaged"]:
            best = (subset, score)
    return [Path(paths[i]) for i in best[0]], best[1]


def make_ensemble(paths: list[Path], mirror: bool, name: str, data_dir: Path | None = None,
                  choose: int | None = None, keep_start: float = 0.0) -> tuple[AveragedNetwork, ModelCard, list[str]]:
    """`minorage combine`: the checkpoints averaged (with `choose`, the best ensemble of at most
    that many networks on the validation photos of `data_dir`), its card measured there when a
    data set is given; returns the ensemble, its card and the checkpoints it holds."""
    if choose is not None:
        if data_dir is None:
            raise ValueError("--choose needs --data: members are chosen on their validation photos")
        paths, score = choose_members(paths, data_dir, choose, mirror)
    net, card = combine_checkpoints(paths, mirror, name, keep_start)
    if choose is not None:  # the choice already measured this ensemble on the validation photos
        card.metrics = score
    elif data_dir is not None:
        card.metrics = validate_combined(net, [load_checkpoint(p)[1] for p in paths], data_dir)
    return net, card, [str(p) for p in paths]

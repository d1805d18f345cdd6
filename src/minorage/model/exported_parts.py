"""An age model's parts in ONNX Runtime (`minorage.exported`): what `AgeEstimator.predict` runs
when the exports beside a checkpoint are current, so that reading ages never imports PyTorch.

Each part (the model, or of a routed model its main and its edge part, and a second opinion's
network) is exported whole: its networks with their BatchNorms folded, averaged, over the
mirrored face too where the model mirrors, taking the faces as `predict` does, uint8 (N, H, W, 3)
BGR, and giving the network's ages (N,) before the card's cap. `default.safetensors` has
`default.onnx` (its main part) and `default.edge.onnx` beside it; `blend.safetensors` also
`blend.opinion.onnx`. Which part reads a face, and how a second opinion's age is blended, is
decided outside the networks (`AgeEstimator`), so only a model with a grayscale specialist, whose
part picks a network per face inside it, runs in PyTorch. The exports are made by
`runtime.export_parts` (`scripts/export_onnx.py`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minorage.exported import ExportedNetwork
from minorage.model.card import ModelCard, read_card, weights_file

#: Faces an export reads at a time: the first maps of 32 faces (16 MB) stay in the CPU's cache.
SLICE = 32


def part_paths(weights: Path, card: ModelCard) -> dict[str, Path]:
    """Where a checkpoint's exports lie: `main` (the model itself where it has no edge part),
    `edge`, and `opinion` (the second opinion's network)."""
    return {"main": weights.with_suffix(".onnx"),
            **({"edge": weights.with_name(f"{weights.stem}.edge.onnx")} if card.edge else {}),
            **({"opinion": weights.with_name(f"{weights.stem}.opinion.onnx")} if card.second_opinion else {})}


def exportable(card: ModelCard) -> bool:
    """Whether a model's parts can run as exports: not where a part picks networks per face."""
    return not (card.grayscale or (card.edge or {}).get("grayscale") or (card.second_opinion or {}).get("grayscale"))


def load_parts(weights: Path, card: ModelCard) -> dict[str, ExportedNetwork] | None:
    """Every part's current export, or None where any is missing or stale (the model then runs in PyTorch)."""
    if not exportable(card):
        return None
    parts = {name: ExportedNetwork.of(weights, path) for name, path in part_paths(weights, card).items()}
    return parts if all(parts.values()) else None


def runs_in(checkpoint: Path) -> str:
    """What `predict` runs a checkpoint in, as `minorage info` says it: an examiner can state how
    the ages were computed."""
    weights = weights_file(checkpoint)
    return "ONNX Runtime, from its exports" if load_parts(weights, read_card(weights)) else "PyTorch"


def ages(part: ExportedNetwork, faces: np.ndarray) -> np.ndarray:
    """A part's ages (N,) float32 for uint8 NHWC faces, `SLICE` faces at a time."""
    out = np.empty(len(faces), np.float32)
    for start in range(0, len(faces), SLICE):
        out[start : start + SLICE] = part(np.ascontiguousarray(faces[start : start + SLICE]))[0]
    return out

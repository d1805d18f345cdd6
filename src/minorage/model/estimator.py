"""`AgeEstimator`: a model and its card behind one call, `predict(faces) -> ages`.

Where a checkpoint's parts have current ONNX exports beside it (`exported_parts`: the shipped
default has), `predict` runs them in ONNX Runtime and PyTorch is not imported; the networks load
only for what needs them (`net`, `runtime`: training, calibrating, combining).

A model with an edge part (`ByFrameNetwork`) is two estimators: its main part, and `edge`, an
estimator of its own (its framing, flags and calibration) for the faces whose frame leaves the
photo; `predict` takes each face's route from the caller, who framed it. A model with a second
opinion (`SecondOpinionNetwork`) carries it as `opinion`, an estimator of its own that reads
chips aligned to dlib's template: `blended` takes its share of the age of the faces it reads
(open-eyed ones, and barred ones where it has a barred part), and `flags` applies its raise and
veto given its ages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from minorage import config
from minorage.config import Framing, Framings
from minorage.exported import ExportedNetwork
from minorage.model import exported_parts
from minorage.model.calibration import Calibrations
from minorage.model.card import DEFAULT_MODEL, ModelCard, age_range, describe, read_card, resolve_model, weights_file

if TYPE_CHECKING:
    from torch import nn


class AgeEstimator:
    """An age network (SSR-Net, or the residual network) with its model card: `predict` turns 64x64 BGR face crops into ages in years."""

    def __init__(self, net: nn.Module | Callable[[], nn.Module], card: ModelCard, source: str = "", minor_below: float | None = None,
                 exports: dict[str, ExportedNetwork] | None = None):
        """`net`: the model's networks; or, with `exports` (its parts' current ONNX exports,
        `exported_parts.load_parts`), a function that loads them, called only if they are asked for."""
        self.card, self.source = card, source
        self.opinion: AgeEstimator | None = None
        self.edge: AgeEstimator | None = None
        if exports is None:
            from minorage.model.network import ByFrameNetwork, SecondOpinionNetwork

            if isinstance(net, SecondOpinionNetwork):
                self.opinion = AgeEstimator(net.opinion, ModelCard.from_dict(card.second_opinion), source).over_whole_range()
                net = net.model
            if isinstance(net, ByFrameNetwork):
                self.edge = AgeEstimator(net.edge, ModelCard.from_dict(card.edge), source, minor_below)
            self._net, self._load, self._export = net.eval(), None, None
        else:
            if "opinion" in exports:
                whole = net
                self.opinion = AgeEstimator(lambda: whole().opinion, ModelCard.from_dict(card.second_opinion), source,
                                            exports={"main": exports["opinion"]}).over_whole_range()
                net = lambda: whole().model  # the model's own networks, as net.model above
            if "edge" in exports:
                self.edge = AgeEstimator(lambda: self.net.edge, ModelCard.from_dict(card.edge), source, minor_below, {"main": exports["edge"]})
            self._net, self._load, self._export = None, net, exports["main"]
        self._runtime = None
        top = self.age_range[1]
        if minor_below is not None and not 0 < minor_below <= top:
            raise ValueError(f"the minor flag threshold must be an age within the model's range (0, {top}], got {minor_below}")
        self._minor_below = minor_below  # the user's operating point, else the card's

    @property
    def net(self) -> nn.Module:
        """The model's networks (PyTorch), every part kept but a second opinion (`opinion.net`):
        loaded on first use where `predict` runs exports."""
        if self._net is None:
            self._net = self._load().eval()
        return self._net

    @property
    def runtime(self) -> nn.Module:
        """What `predict` runs in PyTorch: the main part's `runtime_for` (made on first use)."""
        if self._runtime is None:
            from minorage.model.network import ByFrameNetwork
            from minorage.model.runtime import runtime_for

            self._runtime = runtime_for(self.net.main if isinstance(self.net, ByFrameNetwork) else self.net)
        return self._runtime

    @property
    def runs_exported(self) -> bool:
        """Whether `predict` runs in ONNX Runtime (every part's export current), not PyTorch."""
        return self._export is not None and all(part is None or part.runs_exported for part in (self.edge, self.opinion))

    def over_whole_range(self) -> AgeEstimator:
        """This estimator reading its network's whole range, its card's cap lifted (in place).
        Why: a second opinion's veto compares the network's own estimate, which a network
        trained with adults beyond 25 would otherwise report as 25, so no veto above it could fire."""
        self.card = dataclasses.replace(self.card, max_age=None)
        return self

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = DEFAULT_MODEL, minor_below: float | None = None) -> "AgeEstimator":
        """`imdb`, `morph2`, `wiki`, `megaface_asian` (original weights), `default`, or a path;
        `minor_below` flags estimates below it instead of the model card's threshold."""
        key = str(name_or_path)
        if key in config.PRETRAINED_NAMES:
            from minorage.model.keras import load_pretrained_network

            card = ModelCard(
                name=key,
                data={"source": f"original SSR-Net weights {key}.h5 (Yang et al., IJCAI 2018)"},
                licence="Apache-2.0 (SSR-Net pretrained weights)",
            )
            return cls(load_pretrained_network(key), card, source=str(config.ssrnet_weights(key)), minor_below=minor_below)
        path = resolve_model(name_or_path)
        weights = weights_file(path)
        card = read_card(weights)
        if (exports := exported_parts.load_parts(weights, card)) is not None:
            return cls(lambda: _checkpoint_network(weights), card, str(weights), minor_below, exports)
        from minorage.model.checkpoint import load_checkpoint

        net, card = load_checkpoint(path)
        return cls(net, card, source=str(path.with_suffix(".safetensors") if path.is_file() else path), minor_below=minor_below)

    @property
    def framing(self) -> Framing:
        return self.card.framing

    @property
    def framings(self) -> Framings:
        """How faces are framed for the main part, and for the edge part where there is one."""
        chip = self.opinion.card.architecture.image_size if self.opinion else 0
        return Framings(self.framing, self.edge.framing if self.edge else None, self.card.edge_above, chip)

    @property
    def minor_below(self) -> float:
        """Estimates below this are flagged "probably a minor" (the model card's, unless the user
        chose another: a higher one catches more minors and flags more young adults)."""
        return self.card.minor_below if self._minor_below is None else self._minor_below

    def flag(self, eyes_barred: bool = False) -> float:
        """The flag for one kind of face: the user's, else the card's own for eye-barred faces
        where it has one (a model may read barred faces older or younger), else `minor_below`."""
        if self._minor_below is None and eyes_barred and self.card.minor_below_barred is not None:
            return self.card.minor_below_barred
        return self.minor_below

    def flags(self, edge_filled: np.ndarray, eyes_barred: np.ndarray | bool, opinions: np.ndarray | None = None) -> np.ndarray:
        """Each face's flag: its part's (the edge part's for the faces `edge_filled` marks, where
        the model has one), for its kind, as `predict` and `scan` read it out; with the second
        opinion's ages (NaN where it read none), its veto and raise (`with_second_opinion`)."""
        edge = self.edge or self
        below = np.where(edge_filled, np.where(eyes_barred, edge.flag(True), edge.flag(False)),
                         np.where(eyes_barred, self.flag(True), self.flag(False)))
        if self.opinion is None or opinions is None:
            return below
        return with_second_opinion(below, opinions, eyes_barred, self.card.second_opinion)

    def blended(self, ages: np.ndarray, eyes_barred: np.ndarray | bool, opinions: np.ndarray | None) -> np.ndarray:
        """The ages this model reports, given its networks' ages and its second opinion's
        (`blended_ages`; the ages unchanged for a model without one)."""
        if self.opinion is None or opinions is None:
            return np.asarray(ages, float)
        return blended_ages(ages, opinions, eyes_barred, self.card.second_opinion)

    def lifted(self, ages: np.ndarray, edge_filled: np.ndarray, eyes_barred: np.ndarray | bool, opinions: np.ndarray) -> np.ndarray:
        """The faces whose flag the second opinion lifted: flagged at the raised flag, then vetoed."""
        below, second = self.flags(edge_filled, eyes_barred), self.card.second_opinion
        raised = with_second_opinion(below, opinions, eyes_barred, {**second, "veto": np.inf})
        return (np.asarray(ages) < raised) & np.isneginf(with_second_opinion(below, opinions, eyes_barred, second))

    @property
    def calibration(self) -> Calibrations | None:
        """The card's calibrated p_minor and age interval (None for a model never calibrated)."""
        return Calibrations.from_dict(self.card.calibration)

    @property
    def age_range(self) -> tuple[int, int]:
        """The ages `predict` reports (the card's `max_age` caps the network's range)."""
        return age_range(self.card)

    def predict(self, faces: np.ndarray, batch_size: int = 256, edge_filled: np.ndarray | None = None) -> np.ndarray:
        """Ages (N,) float32 for uint8 faces (N, 64, 64, 3), BGR, raw 0..255; capped at the
        card's `max_age` (a model trained on [0, 25] with adults beyond it says "25 or older").
        `edge_filled` (N,) marks the faces framed for the edge part (`framing.frame_routed`):
        read by it where the model has one."""
        faces = np.asarray(faces)
        size = self.card.architecture.image_size
        if faces.ndim != 4 or faces.shape[1:] != (size, size, 3):
            raise ValueError(f"faces must be (N, {size}, {size}, 3) uint8 BGR, got {faces.shape}")
        if faces.dtype != np.uint8:
            raise ValueError(f"faces must be uint8 (raw 0..255), got {faces.dtype}")
        if self.edge is None or edge_filled is None:
            return self._ages(faces, batch_size)
        filled = np.asarray(edge_filled, bool)
        if filled.shape != (len(faces),):
            raise ValueError(f"edge_filled must mark each of the {len(faces)} faces, got {len(filled)}")
        ages = np.empty(len(faces), np.float32)
        if (~filled).any():
            ages[~filled] = self._ages(faces[~filled], batch_size)
        if filled.any():
            ages[filled] = self.edge.predict(faces[filled], batch_size)
        return ages

    def _ages(self, faces: np.ndarray, batch_size: int) -> np.ndarray:
        """The main part's ages, capped at the card's `max_age`: from its export, else in PyTorch."""
        if self._export is None:
            from minorage.model.runtime import predict_ages

            return predict_ages(self.runtime, faces, batch_size, self.card.max_age)
        ages = exported_parts.ages(self._export, faces)
        return ages if self.card.max_age is None else np.minimum(ages, np.float32(self.card.max_age))

    def describe(self) -> dict:
        """What `minorage info` shows: size, parameters, range, framing and the model card."""
        return describe(self.card, self.source, sum(p.numel() for p in self.net.parameters()), self.age_range)


def _checkpoint_network(path: Path) -> nn.Module:
    from minorage.model.checkpoint import load_checkpoint

    return load_checkpoint(path)[0]


def with_second_opinion(below: np.ndarray | float, opinions: np.ndarray | float, eyes_barred: np.ndarray | bool,
                        second_opinion: dict) -> np.ndarray:
    """Flags (an estimate below is flagged) with a second opinion (a card's `second_opinion`): on
    a face that it read, raised by its "raise", and minus infinity (never flagged) where it says
    "veto" years or more (a veto of None lifts no flag). It reads eye-barred faces only where it
    has a "barred" part (their own "weight" and "raise", no veto): a network trained on open
    eyes reads a bar as an adult (docs/model-history.md, step 23)."""
    opinions, reads = np.asarray(opinions, float), opinion_reads(opinions, eyes_barred, second_opinion)
    raised = np.asarray(below, float) + np.where(reads, opinion_setting(second_opinion, eyes_barred, "raise"), 0.0)
    veto = second_opinion.get("veto")
    if veto is None:
        return raised
    return np.where(reads & ~np.asarray(eyes_barred, bool) & (np.nan_to_num(opinions) >= veto), -np.inf, raised)


def blended_ages(ages: np.ndarray | float, opinions: np.ndarray | float, eyes_barred: np.ndarray | bool,
                 second_opinion: dict) -> np.ndarray:
    """The ages a model with a second opinion reports: on a face that it read, its "weight" (its
    barred part's on a barred face) of the second network's age and the rest of the model's own
    (a weight of 0, or none, leaves the model's ages). Why: the second network reads faces in
    photos with far fewer adults below 18 at the same share of minors (docs/model-history.md,
    steps 27-29)."""
    opinions = np.asarray(opinions, float)
    reads = opinion_reads(opinions, eyes_barred, second_opinion)
    weight = np.broadcast_to(opinion_setting(second_opinion, eyes_barred, "weight"), reads.shape)
    blended = np.array(np.broadcast_to(np.asarray(ages, float), reads.shape))
    blended[reads] = (1 - weight[reads]) * blended[reads] + weight[reads] * np.broadcast_to(opinions, reads.shape)[reads]
    return blended


def opinion_reads(opinions: np.ndarray | float, eyes_barred: np.ndarray | bool, second_opinion: dict) -> np.ndarray:
    """The faces a second opinion speaks on: those it read, with open eyes or, where it has a
    barred part, barred."""
    barred = np.asarray(eyes_barred, bool)
    return (~barred | ("barred" in second_opinion)) & np.isfinite(np.asarray(opinions, float))


def opinion_setting(second_opinion: dict, eyes_barred: np.ndarray | bool, key: str) -> np.ndarray:
    """One of a second opinion's numbers per face: its barred part's on barred faces."""
    return np.where(eyes_barred, second_opinion.get("barred", {}).get(key, 0.0), second_opinion.get(key, 0.0))

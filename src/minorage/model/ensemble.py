"""Ensembles: several trained checkpoints averaged into one model, each member's card kept.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from minorage import groups
from minorage.model.card import ModelCard
from minorage.model.checkpoint import load_checkpoint, load_network
from minorage.model.network import AveragedNetwork, ByFrameNetwork, ByLookNetwork, SecondOpinionNetwork


def toward_start(net: nn.Module, card: ModelCard, share: float) -> nn.Module:
    """A fine-tuned network with its weights moved `share` of the way back to those of the
    network it was fine-tuned from (its card's `init` checkpoint, network `init_member`).

    Why: a short fine-tune for one thing (faces in scenes) also drifts on what the start did
    well (the stored faces); a network between the two, in weight space, can keep much of both,
    as both lie in one basin."""
    start_path = Path(str(card.training.get("init", "")))
    if isinstance(net, AveragedNetwork) or not start_path.is_file():
        raise ValueError(f"{card.name}: moving weights toward the start needs one network fine-tuned from a checkpoint "
                         f"(its card's init is {card.training.get('init')!r})")
    start, _ = load_network(start_path, int(card.training.get("init_member", 0)))
    if start.cfg != net.cfg:
        raise ValueError(f"{card.name}: its start {start_path} is another architecture")
    before = start.state_dict()
    net.load_state_dict({k: v + share * (before[k] - v) if v.is_floating_point() else v for k, v in net.state_dict().items()})
    return net


def combine_checkpoints(paths: list[Path], mirror: bool, name: str, keep_start: float = 0.0) -> tuple[AveragedNetwork, ModelCard]:
    """One ensemble of several trained checkpoints (same architecture and framing); the card
    keeps each member's card. A single model only mirrored keeps its own data, training
    and metrics, with the mirroring added. With `keep_start`, each network is first moved that
    share of the way back to the network it was fine-tuned from (`toward_start`)."""
    loaded = [load_checkpoint(Path(p)) for p in paths]
    if keep_start:
        loaded = [(toward_start(net, card, keep_start), card) for net, card in loaded]
    if any(isinstance(net, ByLookNetwork) for net, _ in loaded):
        raise ValueError("a model that already routes black-and-white faces cannot be averaged with others: "
                         "average the colour models, then add the specialist (--grayscale)")
    if any(isinstance(net, SecondOpinionNetwork) for net, _ in loaded):
        raise ValueError("a model with a second opinion cannot be averaged with others: average the models, then add it (--second-opinion)")
    if any(isinstance(net, ByFrameNetwork) for net, _ in loaded):
        raise ValueError("a model with an edge part cannot be averaged with others: average the main models, then add the part (--edge)")
    members = [m for net, _ in loaded for m in (net.members if isinstance(net, AveragedNetwork) else [net])]
    framings = {card.framing for _, card in loaded}
    if len(framings) != 1:
        raise ValueError(f"members frame faces differently: {framings}")
    ranges = {card.max_age for _, card in loaded}
    if len(ranges) != 1:
        raise ValueError(f"members report different age ranges (max_age {ranges})")
    first = loaded[0][1]
    alone = len(loaded) == 1
    card = ModelCard(
        name=name,
        framing=framings.pop(),
        data=first.data if alone else {**_shared_data(c for _, c in loaded),
                                       "members": [m for p, (_, c) in zip(paths, loaded) for m in _member_entries(p, c)]},
        training={**(first.training if alone else {}), "ensemble_of": [str(p) for p in paths], "mirror": mirror,
                  **({"keep_start": keep_start} if keep_start else {})},
        metrics=first.metrics if alone else {},
        minor_below=first.minor_below if len({c.minor_below for _, c in loaded}) == 1 else groups.MINOR_BELOW,
        max_age=ranges.pop(),
        licence=first.licence,
    )
    return AveragedNetwork(members, mirror), card


def attach_grayscale(colour: nn.Module, card: ModelCard, grayscale: nn.Module, grayscale_card: ModelCard,
                     source: str) -> tuple[ByLookNetwork, ModelCard]:
    """A model whose black-and-white faces go to a grayscale specialist: the colour model's card
    kept whole (its flag, calibration and measures), the specialist's name, data, training and
    metrics recorded in it, with `source`, where it was read from."""
    if any(isinstance(net, (ByLookNetwork, ByFrameNetwork, SecondOpinionNetwork)) for net in (colour, grayscale)):
        raise ValueError("a model that already routes faces (by look or by frame) cannot take a grayscale specialist")
    if grayscale_card.framing != card.framing or grayscale_card.max_age != card.max_age:
        raise ValueError(f"{source} frames faces or reports ages differently from the colour model")
    card.grayscale = {"source": source, "name": grayscale_card.name, "data": grayscale_card.data,
                      "training": grayscale_card.training, "metrics": grayscale_card.metrics}
    return ByLookNetwork(colour, grayscale), card


def attach_edge(main: nn.Module, card: ModelCard, edge: nn.Module, edge_card: ModelCard, source: str,
                above: float = 0.0) -> tuple[ByFrameNetwork, ModelCard]:
    """A model whose faces with more than `above` of their frame past the photo go to `edge`,
    read at the edge model's own framing, flags and calibration: the main model's card kept
    whole, the edge model's whole card in it, with `source`, where it was read from. Why: see
    `ByFrameNetwork`."""
    if not 0 <= above < 1:
        raise ValueError(f"the share of a frame past the photo that routes a face is from 0 up to, not including, 1; got {above}")
    if any(isinstance(net, SecondOpinionNetwork) for net in (main, edge)):
        raise ValueError("give the edge part before the second opinion: a model with a second opinion takes no edge part")
    if isinstance(main, ByFrameNetwork) or isinstance(edge, ByFrameNetwork):
        raise ValueError("a model that already has an edge part cannot take another")
    if edge_card.max_age != card.max_age:
        raise ValueError(f"{source} reports ages differently from the main model (max_age {edge_card.max_age} and {card.max_age})")
    if edge.cfg.image_size != main.cfg.image_size:
        raise ValueError(f"{source} takes faces of another size than the main model")
    card.edge, card.edge_above = {"source": source, **edge_card.to_dict()}, above
    return ByFrameNetwork(main, edge), card


def attach_second_opinion(model: nn.Module, card: ModelCard, opinion: nn.Module, opinion_card: ModelCard, source: str,
                          veto: float | None, raise_by: float = 0.0, weight: float = 0.0,
                          barred: dict | None = None) -> tuple[SecondOpinionNetwork, ModelCard]:
    """A model whose age of a face with open eyes is `weight` of `opinion`'s (read on its own
    aligned chip) and the rest its own, whose flag on such a face is raised by `raise_by` years
    and stands only where `opinion` puts the face below `veto` years (None: no veto); with
    `barred` ({"weight", "raise"}), eye-barred faces are read too, by those (no veto). The
    model's card kept whole, the opinion's whole card in it, with `source`, where it was read
    from, and these settings; but for its calibrations where a weight blends the ages, since
    they were fit on the model's own (`minorage calibrate` fits them again). Why: see
    `SecondOpinionNetwork`."""
    if any(isinstance(n, SecondOpinionNetwork) for n in (model, opinion)) or isinstance(opinion, (ByFrameNetwork, ByLookNetwork)):
        raise ValueError("a second opinion is one network (or ensemble) beside a model that has none yet")
    top = opinion.cfg.V - 1
    if veto is not None and not 0 < veto <= top:
        raise ValueError(f"the second opinion's veto is an age within its range (0, {top}], got {veto}")
    for share, years in ((weight, raise_by), *([(barred["weight"], barred["raise"])] if barred else [])):
        if not 0 <= share <= 1:
            raise ValueError(f"the second opinion's weight in the age is a share from 0 to 1, got {share}")
        if not 0 <= years <= 10:
            raise ValueError(f"the flag's raise on the faces the second opinion reads is 0 to 10 years, got {years}")
    if veto is None and weight == 0 and not (barred and barred["weight"]):
        raise ValueError("a second opinion with neither a veto nor a weight in the age would change nothing")
    card.second_opinion = {"source": source, "veto": veto, "raise": raise_by, "weight": weight,
                           **({"barred": {"weight": barred["weight"], "raise": barred["raise"]}} if barred else {}), **opinion_card.to_dict()}
    if weight or (barred and barred["weight"]):  # blended ages: a calibration fit on the model's own no longer holds
        card.calibration = None
        if card.edge:
            card.edge = {k: v for k, v in card.edge.items() if k != "calibration"}
    return SecondOpinionNetwork(model, opinion), card


def _member_entries(path: Path, card: ModelCard) -> list[dict]:
    """The member cards an ensemble's card lists for one input checkpoint: an ensemble given
    as an input contributes its own members' cards, so the list stays one network per entry."""
    return card.data["members"] if "members" in card.data else [{"path": str(path), **card.to_dict()}]


def member_cards(card: ModelCard) -> list[ModelCard]:
    """The cards of the networks a model averages (its own card for a single network): each
    keeps the training options, such as the validation split, that an ensemble's card does not."""
    return [ModelCard.from_dict(m) for m in card.data["members"]] if "members" in card.data else [card]


def _shared_data(cards) -> dict:
    """The data set all members were trained on, if they share one (else nothing)."""
    sets = {json.dumps({k: c.data.get(k) for k in ("dataset", "dataset_config")}, sort_keys=True) for c in cards}
    return json.loads(sets.pop()) if len(sets) == 1 else {}

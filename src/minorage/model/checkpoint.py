"""The project's own checkpoints: weights in safetensors (nothing unpickled), the model card
(`card`) in JSON beside them."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from minorage.model.card import CHECKPOINT_FORMAT, ModelCard, card_path, read_card, weights_file
from minorage.model.network import AveragedNetwork, ByFrameNetwork, ByLookNetwork, SecondOpinionNetwork, build_network


def save_checkpoint(net: nn.Module, card: ModelCard, path: Path) -> Path:
    """Write `path` (.safetensors) and its card (.json); returns the weights path."""
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(net, SecondOpinionNetwork):
        opinion_card = ModelCard.from_dict(card.second_opinion)
        net = SecondOpinionNetwork(_routed_shape(net.model, card), _shaped(net.opinion, opinion_card))
        card.second_opinion = {**card.second_opinion, **opinion_card.to_dict()}
    else:
        net, card.second_opinion = _routed_shape(net, card), None
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(path), metadata={"format": CHECKPOINT_FORMAT})
    card_path(path).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    return path


def _routed_shape(net: nn.Module, card: ModelCard) -> nn.Module:
    """A model, with its edge part where it has one, in the shape it loads back in."""
    if isinstance(net, ByFrameNetwork):
        edge_card = ModelCard.from_dict(card.edge)
        net = ByFrameNetwork(_shaped(net.main, card), _shaped(net.edge, edge_card))
        card.edge = {**card.edge, **edge_card.to_dict()}
        return net
    card.edge = None
    return _shaped(net, card)


def _shaped(net: nn.Module, card: ModelCard) -> nn.Module:
    """A model (or a routed model's part) in the shape it loads back in, its card saying that shape."""
    net = ByLookNetwork(_plain(net.colour), _plain(net.grayscale)) if isinstance(net, ByLookNetwork) else _plain(net)
    card.architecture = net.cfg
    card.members, card.mirror = _shape(net.colour if isinstance(net, ByLookNetwork) else net)
    card.grayscale = {**(card.grayscale or {}), **dict(zip(("members", "mirror"), _shape(net.grayscale)))} \
        if isinstance(net, ByLookNetwork) else None
    return net


def _plain(net: nn.Module) -> nn.Module:
    """An "ensemble" of one network, not mirrored, as that network: the shape it loads back in."""
    return net.members[0] if isinstance(net, AveragedNetwork) and len(net.members) == 1 and not net.mirror else net


def _shape(net: nn.Module) -> tuple[int, bool]:
    """How many networks a model averages, and whether over the mirrored face too."""
    return (len(net.members), net.mirror) if isinstance(net, AveragedNetwork) else (1, False)


def _assemble(card: ModelCard, members: int, mirror: bool) -> nn.Module:
    """Untrained networks in the shape a card gives: one, or several averaged."""
    nets = [build_network(card.architecture) for _ in range(members)]
    return AveragedNetwork(nets, mirror) if members > 1 or mirror else nets[0]


def _built(card: ModelCard) -> nn.Module:
    """An untrained model as a card describes it, with its grayscale specialist if it has one."""
    net = _assemble(card, card.members, card.mirror)
    if card.grayscale:
        net = ByLookNetwork(net, _assemble(card, int(card.grayscale["members"]), bool(card.grayscale["mirror"])))
    return net


def load_checkpoint(path: Path) -> tuple[nn.Module, ModelCard]:
    """Read a checkpoint written by `save_checkpoint` (safetensors: no code is unpickled)."""
    from safetensors.torch import load_file

    path = weights_file(path)
    card = read_card(path)
    net = _built(card)
    if card.edge:
        net = ByFrameNetwork(net, _built(ModelCard.from_dict(card.edge)))
    if card.second_opinion:
        net = SecondOpinionNetwork(net, _built(ModelCard.from_dict(card.second_opinion)))
    missing, unexpected = net.load_state_dict(load_file(str(path)), strict=False)
    real_missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if real_missing or unexpected:
        raise RuntimeError(f"{path}: missing {real_missing}, unexpected {unexpected}")
    return net.eval(), card


def load_network(path: Path, member: int = 0) -> tuple[nn.Module, ModelCard]:
    """One network of a checkpoint and its card: of a model with a second opinion, the model's; of
    a model with an edge part, its main part; of a model that routes black-and-white faces, its
    colour networks; of an ensemble, its `member`-th (a shipped default's members have no
    checkpoints of their own)."""
    net, card = load_checkpoint(path)
    if isinstance(net, SecondOpinionNetwork):
        net = net.model
    if isinstance(net, ByFrameNetwork):
        net = net.main
    if isinstance(net, ByLookNetwork):
        net = net.colour
    if isinstance(net, AveragedNetwork):
        if not 0 <= member < len(net.members):
            raise ValueError(f"{path} averages {len(net.members)} networks: init_member {member} is not one of them")
        net = net.members[member]
    return net, card

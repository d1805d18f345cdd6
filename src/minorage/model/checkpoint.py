"""The project's own checkpoints: weights in safetensors (nothing unpickled), the model card
(`card`) in JSON beside them."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from minorage.model.card import CHECKPOINT_FORMAT, ModelCard, card_path, read_card, weights_file
from minorage.model.network import AveragedNetwork, build_network


def save_checkpoint(net: nn.Module, card: ModelCard, path: Path) -> Path:
    """Write `path` (.safetensors) and its card (.json); returns the weights path."""
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    card.architecture = net.cfg
    ensemble = isinstance(net, AveragedNetwork)
    card.members, card.mirror = (len(net.members), net.mirror) if ensemble else (1, False)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(path), metadata={"format": CHECKPOINT_FORMAT})
    card_path(path).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    return path


def load_checkpoint(path: Path) -> tuple[nn.Module, ModelCard]:
    """Read a checkpoint written by `save_checkpoint` (safetensors: no code is unpickled)."""
    from safetensors.torch import load_file

    path = weights_file(path)
    card = read_card(path)
    members = [build_network(card.architecture) for _ in range(card.members)]
    net = AveragedNetwork(members, card.mirror) if card.members > 1 or card.mirror else members[0]
    missing, unexpected = net.load_state_dict(load_file(str(path)), strict=False)
    real_missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if real_missing or unexpected:
        raise RuntimeError(f"{path}: missing {real_missing}, unexpected {unexpected}")
    return net.eval(), card



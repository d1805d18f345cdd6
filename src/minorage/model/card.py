"""What a checkpoint is, readable without torch: its model card (architecture, framing, the
flag's threshold, data, training, metrics, licence), where a named model lives, and what
`minorage info` shows. The weights themselves are read by `checkpoint`."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

from minorage import config, groups
from minorage.config import Framing, ResNetConfig, SSRNetConfig
from minorage.exported import file_sha256

CHECKPOINT_FORMAT = "minorage-ssrnet/1"
DEFAULT_MODEL = "default"
#: state-dict entries that are running statistics, not parameters
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class ModelCard:
    """What a checkpoint is: architecture, input framing, and where it came from."""

    architecture: SSRNetConfig | ResNetConfig = field(default_factory=SSRNetConfig)
    framing: Framing = field(default_factory=Framing)
    name: str = ""
    data: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    licence: str = ""
    minor_below: float = groups.MINOR_BELOW  # the "probably a minor" flag: an estimate below this
    minor_below_barred: float | None = None  # eye-barred faces' own flag, where it differs
    edge_above: float = 0.0  # with an edge part: the share of a face's frame past the photo above which it reads the face
    max_age: float | None = None  # estimates above are reported as this ("this age or older")
    members: int = 1  # networks averaged (an ensemble when above 1)
    mirror: bool = False  # each also averaged over the mirrored face
    calibration: dict | None = None  # p_minor and the age interval (`model.calibration`), if fit
    grayscale: dict | None = None  # the specialist black-and-white faces go to (`ByLookNetwork`):
    # its "members" and "mirror", and its own card's name, data, training and metrics
    edge: dict | None = None  # the whole card (with its "source") of the part that reads the faces
    # whose frame leaves the photo (`framing.frame_routed`), with its own framing, flags and calibration
    second_opinion: dict | None = None  # the whole card (with its "source") of a network that reads faces
    # with open eyes: its "weight" (its share in their age; absent in cards before it, 0), its "veto"
    # (the age from which it lifts the flag; None for none) and "raise" (years added to their flag);
    # where it reads eye-barred faces too, "barred": their own "weight" and "raise"

    def to_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "name": self.name,
            "architecture": {**_architecture_dict(self.architecture), "members": self.members, "mirror": self.mirror},
            "framing": self.framing.to_dict(),
            "decision": {"minor_below": self.minor_below, "max_age": self.max_age,
                         **({"minor_below_barred": self.minor_below_barred} if self.minor_below_barred is not None else {}),
                         **({"edge_above": self.edge_above} if self.edge_above else {})},
            "data": self.data,
            "training": self.training,
            "metrics": self.metrics,
            "licence": self.licence,
            **({"calibration": self.calibration} if self.calibration else {}),
            **({"grayscale": self.grayscale} if self.grayscale else {}),
            **({"edge": self.edge} if self.edge else {}),
            **({"second_opinion": self.second_opinion} if self.second_opinion else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ModelCard":
        if data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {CHECKPOINT_FORMAT} model card (format={data.get('format')!r})")
        barred = data.get("decision", {}).get("minor_below_barred")
        return cls(
            architecture=_architecture(data["architecture"]),
            members=int(data["architecture"].get("members", 1)),
            mirror=bool(data["architecture"].get("mirror", False)),
            framing=Framing.from_dict(data["framing"]),
            minor_below=float(data.get("decision", {}).get("minor_below", groups.MINOR_BELOW)),
            minor_below_barred=None if barred is None else float(barred),
            edge_above=float(data.get("decision", {}).get("edge_above", 0.0)),
            max_age=data.get("decision", {}).get("max_age"),
            name=data.get("name", ""),
            data=data.get("data", {}),
            training=data.get("training", {}),
            metrics=data.get("metrics", {}),
            licence=data.get("licence", ""),
            calibration=data.get("calibration"),
            grayscale=data.get("grayscale"),
            edge=data.get("edge"),
            second_opinion=data.get("second_opinion"),
        )


def _architecture_dict(arch: SSRNetConfig | ResNetConfig) -> dict:
    if isinstance(arch, ResNetConfig):
        return {"name": "resnet", "widths": list(arch.widths), "ages": list(arch.ages), "image_size": arch.image_size}
    return {"name": "ssrnet", **asdict(arch), "stages": list(arch.stages)}


def _architecture(data: dict) -> SSRNetConfig | ResNetConfig:
    """The architecture a card names (cards older than the residual network name SSR-Net)."""
    return ResNetConfig.from_dict(data) if data.get("name") == "resnet" else SSRNetConfig.from_dict(data)


def card_path(weights_path: Path) -> Path:
    """The metadata JSON that sits beside a checkpoint's .safetensors file."""
    return weights_path.with_suffix(".json")


def packaged_model_path(name: str = DEFAULT_MODEL) -> Path:
    """A model shipped inside the package (src/minorage/weights/)."""
    return Path(str(resources.files("minorage") / "weights" / f"{name}.safetensors"))


def packaged_models() -> list[Path]:
    """The age models shipped inside the package, by name: `default` and the others beside it."""
    return sorted(packaged_model_path().parent.glob("*.safetensors"))


def resolve_model(name_or_path: str | Path) -> Path | None:
    """The checkpoint a model name or path means; None for the original SSR-Net weights
    (`config.PRETRAINED_NAMES`), which are not checkpoints of this project."""
    key = str(name_or_path)
    if key in config.PRETRAINED_NAMES:
        return None
    path = Path(name_or_path)
    if not path.exists() and not any(sep in key for sep in "/\\") and not key.endswith(".safetensors"):
        path = packaged_model_path(key)
        if not path.exists():
            known = ", ".join((*config.PRETRAINED_NAMES, *(p.stem for p in packaged_models())))
            raise FileNotFoundError(f"no model named {key!r}: give one of {known}, or a checkpoint path")
    return path


def weights_file(path: Path) -> Path:
    """The .safetensors file of a checkpoint given as a file (either half) or as its folder."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors"))
        if len(candidates) != 1:
            raise FileNotFoundError(f"{path}: expected one .safetensors checkpoint, found {len(candidates)}")
        path = candidates[0]
    path = path.with_suffix(".safetensors")
    if not path.is_file() or not card_path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (needs {path.name} and {card_path(path).name})")
    return path


def read_card(path: Path) -> ModelCard:
    return ModelCard.from_dict(json.loads(card_path(weights_file(path)).read_text()))


def record_metrics(path: Path | None, key: str, measures: dict) -> Path:
    """Write `measures` into a checkpoint's card under metrics[key] (the card's other fields and
    the weights as they were); returns the card's path."""
    if path is None:
        raise ValueError("the original SSR-Net weights have no model card to record measures in")
    card = card_path(weights_file(path))
    data = json.loads(card.read_text())
    data.setdefault("metrics", {})[key] = measures
    card.write_text(json.dumps(data, indent=2) + "\n")
    return card


def describe(card: ModelCard, source: str, parameters: int, age_range: tuple[int, int]) -> dict:
    """What `minorage info` shows: size, parameters, range, framing and the model card."""
    file = Path(source) if source else None
    return {
        "model": card.name or source,
        "source": source,
        "size_bytes": file.stat().st_size if file and file.is_file() else None,
        "sha256": file_sha256(file) if file and file.is_file() else None,
        "parameters": parameters,
        "age_range": list(age_range),
        **({"blended_age_range": [0, top]} if (top := blended_top(card, age_range[1])) is not None else {}),
        **{k: v for k, v in card.to_dict().items() if k not in ("format", "name")},
    }


def blended_top(card: ModelCard, own_top: float) -> float | None:
    """The oldest age a model whose second opinion blends into the age can report (None for
    any other model): its weight of the second network's whole range and the rest of the
    model's own top, for the kind of face with the larger weight. Why `info` shows it: such a
    model reports ages past its networks' range."""
    second = card.second_opinion or {}
    weight = max(second.get("weight", 0.0), second.get("barred", {}).get("weight", 0.0))
    if not weight:
        return None
    opinion_top = age_range(replace(ModelCard.from_dict(second), max_age=None))[1]
    return round((1 - weight) * own_top + weight * opinion_top, 1)


def age_range(card: ModelCard) -> tuple[int, int]:
    """The ages a model reports: the network's range [0, V - 1], capped by the card's `max_age`."""
    top = card.architecture.V - 1
    return 0, top if card.max_age is None else min(top, int(card.max_age))


def describe_checkpoint(name_or_path: str | Path) -> dict:
    """`describe` of a checkpoint from its card and the tensor shapes in its file's header: no
    weights are loaded and torch is not imported."""
    from safetensors import safe_open

    path = weights_file(resolve_model(name_or_path))
    card = read_card(path)
    with safe_open(str(path), framework="numpy") as f:
        parameters = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if not k.endswith(_BUFFERS))
    return describe(card, str(path), parameters, age_range(card))

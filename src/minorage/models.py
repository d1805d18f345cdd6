"""SSR-Net (Yang et al., IJCAI 2018) in PyTorch, its Keras weights, checkpoints and `AgeEstimator`.

The network is the released 3-3-3 model: two convolution streams (ReLU + average pooling, tanh
+ max pooling), three stage heads that each output a soft distribution `p` over `s` bins, a
shift `eta` of each bin (local, "lambda_local") and a scale `delta` of the stage's bin width
("lambda_d"); the soft stagewise regression merges them into an age in [0, V).

Input: uint8 (N, 64, 64, 3), BGR as OpenCV reads it, raw 0..255 values, exactly as the original
Keras model was fed; no normalisation.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import config
from .config import Framing


@dataclass(frozen=True)
class SSRNetConfig:
    """Architecture hyper-parameters (the paper's 3-3-3, lambda_local = lambda_d = 1)."""

    stages: tuple[int, int, int] = (3, 3, 3)
    lambda_local: float = 1.0
    lambda_d: float = 1.0
    V: int = 101  # ages span [0, V); 101 for the released weights, 26 for [0, 25]
    image_size: int = 64

    @classmethod
    def from_dict(cls, data: dict) -> "SSRNetConfig":
        return cls(
            stages=tuple(data["stages"]),
            lambda_local=float(data["lambda_local"]),
            lambda_d=float(data["lambda_d"]),
            V=int(data["V"]),
            image_size=int(data["image_size"]),
        )


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


class AveragedSSRNet(nn.Module):
    """Several SSR-Nets (e.g. the Org and the Ocl model, the paper's future work), optionally
    each also on the mirrored face; the age is the mean of all their outputs."""

    def __init__(self, members: list[SSRNet], mirror: bool = False):
        super().__init__()
        if not members or len({m.cfg for m in members}) != 1:
            raise ValueError("an ensemble needs one or more SSR-Nets of the same configuration")
        self.members = nn.ModuleList(members)
        self.mirror = mirror
        self.cfg = members[0].cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = [x, x.flip(3)] if self.mirror else [x]
        return torch.stack([m(v) for m in self.members for v in views]).mean(dim=0)


def fold_batch_norms(net: nn.Module) -> nn.Module:
    """An inference copy with every BatchNorm folded into the convolution before it: the same
    outputs (to float rounding) with one pass over memory fewer per block."""
    import copy

    folded = copy.deepcopy(net).eval()
    for block in (m for m in folded.modules() if isinstance(m, nn.Sequential)):
        conv, bn = block[0], block[1]
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            continue
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        with torch.no_grad():
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
        block[1] = nn.Identity()
    return folded.to(memory_format=torch.channels_last)


#: Faces a runtime pass takes at a time. A 256-face batch's first maps (126 MB) overflow the CPU's
#: cache and every activation then waits on memory; 32 faces' (16 MB) stay in it.
RUNTIME_SLICE = 32


class InferenceRuntime(nn.Module):
    """What `AgeEstimator.predict` runs: the network with its BatchNorms folded. Bulk batches go
    through a TorchScript-frozen copy, in which oneDNN runs each convolution with its activation
    fused, in `RUNTIME_SLICE`-face slices: the same ages to float rounding, about five times
    faster on two cores (benchmarks/age_model.py). Tracing costs about a second, so the copy is
    made for the first batch of `RUNTIME_SLICE` faces or more; one photo's faces never wait for it."""

    def __init__(self, net: SSRNet | AveragedSSRNet):
        super().__init__()
        self.folded = fold_batch_norms(net)
        self.frozen: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) < RUNTIME_SLICE:
            return self.folded(x)
        bulk = self.bulk()
        return torch.cat([bulk(part) for part in x.split(RUNTIME_SLICE)])

    def bulk(self) -> nn.Module:
        """The frozen copy, traced on first use (the folded copy where this PyTorch cannot trace)."""
        if self.frozen is None:
            size = self.folded.cfg.image_size
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript: deprecated, still the fastest here
                    example = torch.zeros(RUNTIME_SLICE, 3, size, size)
                    self.frozen = torch.jit.optimize_for_inference(torch.jit.trace(self.folded, example))
            except (AttributeError, RuntimeError) as error:
                warnings.warn(f"the age model runs without TorchScript ({error}): the same ages, more slowly")
                self.frozen = self.folded
        return self.frozen


# ---------------------------------------------------------------------------------------------
# The original Keras weights

#: Keras layer names of each stage head: (s_conv, x_conv, s_fc, x_fc, feat, pred, local, delta)
_KERAS_STAGES = (
    ("conv2d_9", "conv2d_10", "dense_1", "dense_2", "dense_3", "pred_age_stage1", "local_delta_stage1", "delta_s1"),
    ("conv2d_11", "conv2d_12", "dense_4", "dense_5", "dense_6", "pred_age_stage2", "local_delta_stage2", "delta_s2"),
    ("conv2d_13", "conv2d_14", "dense_7", "dense_8", "dense_9", "pred_age_stage3", "local_delta_stage3", "delta_s3"),
)
#: flattened maps (H, W, C) that feed a dense layer, per stage
_FLAT_SHAPES = ((4, 4, 10), (3, 3, 10), (3, 3, 10))


def _keras_dense(group, flat_hwc: tuple[int, int, int] | None = None) -> dict[str, torch.Tensor]:
    """A Keras Dense (in, out) kernel as a torch Linear; reorders inputs that came from a Flatten."""
    kernel = np.asarray(group["kernel:0"]).T  # (out, in)
    if flat_hwc is not None:
        h, w, c = flat_hwc  # Keras flattens channels-last, PyTorch channels-first
        kernel = kernel.reshape(-1, h, w, c).transpose(0, 3, 1, 2).reshape(kernel.shape[0], -1)
    return {"weight": torch.from_numpy(np.ascontiguousarray(kernel)), "bias": torch.from_numpy(np.asarray(group["bias:0"]))}


def _keras_conv(group) -> dict[str, torch.Tensor]:
    kernel = np.asarray(group["kernel:0"]).transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
    return {"weight": torch.from_numpy(np.ascontiguousarray(kernel)), "bias": torch.from_numpy(np.asarray(group["bias:0"]))}


def _keras_bn(group) -> dict[str, torch.Tensor]:
    names = {"weight": "gamma:0", "bias": "beta:0", "running_mean": "moving_mean:0", "running_var": "moving_variance:0"}
    return {k: torch.from_numpy(np.asarray(group[v])) for k, v in names.items()}


def keras_state_dict(h5_path: Path) -> dict[str, torch.Tensor]:
    """Translate an original SSR-Net .h5 into this module's state dict."""
    import h5py  # only needed for the original weights

    state: dict[str, torch.Tensor] = {}

    def put(prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        state.update({f"{prefix}.{k}": v.float() for k, v in tensors.items()})

    with h5py.File(h5_path, "r") as f:
        layer = lambda name: f[name][name]  # noqa: E731  Keras nests name/name/
        for stream, first in (("x_stream", 1), ("s_stream", 5)):
            for i in range(4):
                put(f"{stream}.blocks.{i}.0", _keras_conv(layer(f"conv2d_{first + i}")))
                put(f"{stream}.blocks.{i}.1", _keras_bn(layer(f"batch_normalization_{first + i}")))
        for k, (names, flat) in enumerate(zip(_KERAS_STAGES, _FLAT_SHAPES)):
            s_conv, x_conv, s_fc, x_fc, feat, pred, local, delta = names
            put(f"stages.{k}.s_conv", _keras_conv(layer(s_conv)))
            put(f"stages.{k}.x_conv", _keras_conv(layer(x_conv)))
            put(f"stages.{k}.s_fc", _keras_dense(layer(s_fc), flat))
            put(f"stages.{k}.x_fc", _keras_dense(layer(x_fc), flat))
            put(f"stages.{k}.delta", _keras_dense(layer(delta), flat))
            put(f"stages.{k}.feat", _keras_dense(layer(feat)))
            put(f"stages.{k}.pred", _keras_dense(layer(pred)))
            put(f"stages.{k}.local", _keras_dense(layer(local)))
    return state


def load_pretrained_network(name: str) -> SSRNet:
    """One of the released SSR-Nets (age range [0, 100], V = 101)."""
    net = SSRNet(SSRNetConfig())
    state = keras_state_dict(config.ssrnet_weights(name))
    missing, unexpected = net.load_state_dict(state, strict=False)
    real_missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if real_missing or unexpected:
        raise RuntimeError(f"weight mismatch: missing {real_missing}, unexpected {unexpected}")
    return net.eval()


# ---------------------------------------------------------------------------------------------
# The project's own checkpoints: weights in safetensors, metadata in a JSON beside them

CHECKPOINT_FORMAT = "minorage-ssrnet/1"
DEFAULT_MODEL = "default"


@dataclass
class ModelCard:
    """What a checkpoint is: architecture, input framing, and where it came from."""

    architecture: SSRNetConfig = field(default_factory=SSRNetConfig)
    framing: Framing = field(default_factory=Framing)
    name: str = ""
    data: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    licence: str = ""
    minor_below: float = config.MINOR_BELOW  # the "probably a minor" flag: an estimate below this
    max_age: float | None = None  # estimates above are reported as this ("this age or older")
    members: int = 1  # SSR-Nets averaged (an ensemble when above 1)
    mirror: bool = False  # each also averaged over the mirrored face

    def to_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "name": self.name,
            "architecture": {"name": "ssrnet", **asdict(self.architecture), "stages": list(self.architecture.stages),
                             "members": self.members, "mirror": self.mirror},
            "framing": self.framing.to_dict(),
            "decision": {"minor_below": self.minor_below, "max_age": self.max_age},
            "data": self.data,
            "training": self.training,
            "metrics": self.metrics,
            "licence": self.licence,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ModelCard":
        if data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {CHECKPOINT_FORMAT} model card (format={data.get('format')!r})")
        return cls(
            architecture=SSRNetConfig.from_dict(data["architecture"]),
            members=int(data["architecture"].get("members", 1)),
            mirror=bool(data["architecture"].get("mirror", False)),
            framing=Framing.from_dict(data["framing"]),
            minor_below=float(data.get("decision", {}).get("minor_below", config.MINOR_BELOW)),
            max_age=data.get("decision", {}).get("max_age"),
            name=data.get("name", ""),
            data=data.get("data", {}),
            training=data.get("training", {}),
            metrics=data.get("metrics", {}),
            licence=data.get("licence", ""),
        )


def card_path(weights_path: Path) -> Path:
    """The metadata JSON that sits beside a checkpoint's .safetensors file."""
    return weights_path.with_suffix(".json")


def save_checkpoint(net: SSRNet | AveragedSSRNet, card: ModelCard, path: Path) -> Path:
    """Write `path` (.safetensors) and its card (.json); returns the weights path."""
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    card.architecture = net.cfg
    ensemble = isinstance(net, AveragedSSRNet)
    card.members, card.mirror = (len(net.members), net.mirror) if ensemble else (1, False)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(path), metadata={"format": CHECKPOINT_FORMAT})
    card_path(path).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    return path


def load_checkpoint(path: Path) -> tuple[SSRNet | AveragedSSRNet, ModelCard]:
    """Read a checkpoint written by `save_checkpoint` (safetensors: no code is unpickled)."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors"))
        if len(candidates) != 1:
            raise FileNotFoundError(f"{path}: expected one .safetensors checkpoint, found {len(candidates)}")
        path = candidates[0]
    path = path.with_suffix(".safetensors")
    if not path.is_file() or not card_path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (needs {path.name} and {card_path(path).name})")
    card = ModelCard.from_dict(json.loads(card_path(path).read_text()))
    members = [SSRNet(card.architecture) for _ in range(card.members)]
    net = AveragedSSRNet(members, card.mirror) if card.members > 1 or card.mirror else members[0]
    missing, unexpected = net.load_state_dict(load_file(str(path)), strict=False)
    real_missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if real_missing or unexpected:
        raise RuntimeError(f"{path}: missing {real_missing}, unexpected {unexpected}")
    return net.eval(), card


def combine_checkpoints(paths: list[Path], mirror: bool, name: str) -> tuple[AveragedSSRNet, ModelCard]:
    """One ensemble of several trained checkpoints (same architecture and framing); the card
    keeps each member's card. A single model only mirrored keeps its own data, training
    and metrics, with the mirroring added."""
    loaded = [load_checkpoint(Path(p)) for p in paths]
    members = [m for net, _ in loaded for m in (net.members if isinstance(net, AveragedSSRNet) else [net])]
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
        training={**(first.training if alone else {}), "ensemble_of": [str(p) for p in paths], "mirror": mirror},
        metrics=first.metrics if alone else {},
        minor_below=first.minor_below if len({c.minor_below for _, c in loaded}) == 1 else config.MINOR_BELOW,
        max_age=ranges.pop(),
        licence=first.licence,
    )
    return AveragedSSRNet(members, mirror), card


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


def packaged_model_path(name: str = DEFAULT_MODEL) -> Path:
    """A model shipped inside the package (src/minorage/weights/)."""
    return Path(str(resources.files("minorage") / "weights" / f"{name}.safetensors"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# The public face of a model


@torch.inference_mode()
def predict_ages(net: nn.Module, faces: np.ndarray, batch_size: int = 256, max_age: float | None = None) -> np.ndarray:
    """Run a network (in eval mode) over uint8 NHWC faces in batches: ages (N,) float32."""
    net.eval()
    out = np.empty(len(faces), dtype=np.float32)
    for start in range(0, len(faces), batch_size):
        # NHWC memory seen as NCHW: channels-last, no copy before the float conversion
        chunk = torch.from_numpy(faces[start : start + batch_size]).permute(0, 3, 1, 2).float()
        out[start : start + len(chunk)] = net(chunk).numpy()
    return out if max_age is None else np.minimum(out, np.float32(max_age))


class AgeEstimator:
    """An SSR-Net with its model card: `predict` turns 64x64 BGR face crops into ages in years."""

    def __init__(self, net: SSRNet | AveragedSSRNet, card: ModelCard, source: str = "", minor_below: float | None = None):
        self.net = net.eval()
        self.card = card
        self.source = source
        self.runtime = InferenceRuntime(self.net)  # what `predict` runs
        top = self.age_range[1]
        if minor_below is not None and not 0 < minor_below <= top:
            raise ValueError(f"the minor flag threshold must be an age within the model's range (0, {top}], got {minor_below}")
        self._minor_below = minor_below  # the user's operating point, else the card's

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = DEFAULT_MODEL, minor_below: float | None = None) -> "AgeEstimator":
        """`imdb`, `morph2`, `wiki`, `megaface_asian` (original weights), `default`, or a path;
        `minor_below` flags estimates below it instead of the model card's threshold."""
        key = str(name_or_path)
        if key in config.PRETRAINED_NAMES:
            card = ModelCard(
                name=key,
                data={"source": f"original SSR-Net weights {key}.h5 (Yang et al., IJCAI 2018)"},
                licence="Apache-2.0 (SSR-Net pretrained weights)",
            )
            return cls(load_pretrained_network(key), card, source=str(config.ssrnet_weights(key)), minor_below=minor_below)
        path = Path(name_or_path)
        if not path.exists() and not any(sep in key for sep in "/\\") and not key.endswith(".safetensors"):
            path = packaged_model_path(key)
            if not path.exists():
                known = ", ".join((*config.PRETRAINED_NAMES, DEFAULT_MODEL))
                raise FileNotFoundError(f"no model named {key!r}: give one of {known}, or a checkpoint path")
        net, card = load_checkpoint(path)
        return cls(net, card, source=str(path.with_suffix(".safetensors") if path.is_file() else path), minor_below=minor_below)

    @property
    def framing(self) -> Framing:
        return self.card.framing

    @property
    def minor_below(self) -> float:
        """Estimates below this are flagged "probably a minor" (the model card's, unless the user
        chose another: a higher one catches more minors and flags more young adults)."""
        return self.card.minor_below if self._minor_below is None else self._minor_below

    @property
    def age_range(self) -> tuple[int, int]:
        """The ages `predict` reports (the card's `max_age` caps the network's range)."""
        top = self.net.cfg.V - 1
        return 0, top if self.card.max_age is None else min(top, int(self.card.max_age))

    def predict(self, faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Ages (N,) float32 for uint8 faces (N, 64, 64, 3), BGR, raw 0..255; capped at the
        card's `max_age` (a model trained on [0, 25] with adults beyond it says "25 or older")."""
        faces = np.asarray(faces)
        size = self.net.cfg.image_size
        if faces.ndim != 4 or faces.shape[1:] != (size, size, 3):
            raise ValueError(f"faces must be (N, {size}, {size}, 3) uint8 BGR, got {faces.shape}")
        if faces.dtype != np.uint8:
            raise ValueError(f"faces must be uint8 (raw 0..255), got {faces.dtype}")
        return predict_ages(self.runtime, faces, batch_size, self.card.max_age)

    def describe(self) -> dict:
        """What `minorage info` shows: size, parameters, range, framing and the model card."""
        params = sum(p.numel() for p in self.net.parameters())
        source = Path(self.source) if self.source else None
        return {
            "model": self.card.name or self.source,
            "source": self.source,
            "size_bytes": source.stat().st_size if source and source.is_file() else None,
            "sha256": file_sha256(source) if source and source.is_file() else None,
            "parameters": params,
            "age_range": list(self.age_range),
            **{k: v for k, v in self.card.to_dict().items() if k not in ("format", "name")},
        }

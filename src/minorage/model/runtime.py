"""How a trained network runs at inference: BatchNorms folded, bulk batches through a frozen
TorchScript copy in cache-sized slices, and the one batched loop every caller uses.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from minorage.exported import export
from minorage.model.checkpoint import load_checkpoint
from minorage.model.exported_parts import exportable, part_paths
from minorage.model.network import AveragedNetwork, ByFrameNetwork, ByLookNetwork, SecondOpinionNetwork, averaged, route


def fold_batch_norms(net: nn.Module) -> nn.Module:
    """An inference copy with every BatchNorm folded into the convolution before it: the same
    outputs (to float rounding) with one pass over memory fewer per block."""
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
    faster on two cores (benchmarks/age_model.py). Tracing takes a fraction of a second (`frozen`),
    so the copy is made for the first batch of `RUNTIME_SLICE` faces or more; one photo's faces never wait for it."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.folded = fold_batch_norms(net)
        self.frozen: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) < RUNTIME_SLICE:
            return self.folded(x)
        bulk = self.bulk()
        return torch.cat([bulk(part) for part in x.split(RUNTIME_SLICE)])

    def bulk(self) -> nn.Module:
        """The frozen copy, traced on first use; the folded copy where this PyTorch cannot trace,
        or where the frozen copy's ages are not the folded copy's on a few random faces (the
        check the tracer would make itself, at a tenth of its cost: `frozen`)."""
        if self.frozen is None:
            size = self.folded.cfg.image_size
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript: deprecated, still the fastest here
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes read in Python: fixed by the input size
                    # two faces, not a slice: the tracer keeps every intermediate map alive until
                    # it ends (about 300 MB for six passes at 32 faces); the graph is the same
                    self.frozen = frozen(self.folded, torch.zeros(2, 3, size, size))
                    probe = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255
                    if not torch.allclose(self.frozen(probe), self.folded(probe), atol=1e-3):
                        raise RuntimeError("its frozen copy gives other ages than the network")
            except (AttributeError, RuntimeError) as error:
                warnings.warn(f"the age model runs without TorchScript ({error}): the same ages, more slowly")
                self.frozen = self.folded
        return self.frozen


class FrozenEnsemble(nn.Module):
    """An ensemble's members, each frozen, averaged as `AveragedNetwork` averages them."""

    def __init__(self, members: list[nn.Module], mirror: bool):
        super().__init__()
        self.members, self.mirror = nn.ModuleList(members), mirror

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return averaged(self.members, self.mirror, x)


def frozen(net: nn.Module, example: torch.Tensor) -> nn.Module:
    """The network traced on `example` and frozen for inference. An ensemble's members share one
    architecture, hence one graph: the first member's trace is reused with each member's weights,
    and each member is frozen on its own. The tracer's own check is left out: it traces twice
    more to compare the graphs, 0.5 of a 0.65 s trace of three members (the reuse and the
    freezing take a few hundredths); `InferenceRuntime.bulk` compares the ages instead."""
    if not isinstance(net, AveragedNetwork):
        return torch.jit.optimize_for_inference(torch.jit.trace(net, example, check_trace=False))
    traced = torch.jit.trace(net.members[0], example, check_trace=False)
    return FrozenEnsemble([torch.jit.optimize_for_inference(_with_weights(traced, m)) for m in net.members], net.mirror)


def _with_weights(traced: torch.jit.ScriptModule, member: nn.Module) -> torch.jit.ScriptModule:
    """A copy of a traced network carrying another network's weights and buffers (the same architecture)."""
    clone = copy.deepcopy(traced)
    clone.load_state_dict(dict(member.named_parameters()) | dict(member.named_buffers()))
    return clone


class RoutedRuntime(nn.Module):
    """The runtime of a model with a grayscale specialist (`ByLookNetwork`): each part runs in
    its own `InferenceRuntime`, and each face goes to the part made for how it looks."""

    def __init__(self, net: ByLookNetwork):
        super().__init__()
        self.colour, self.grayscale = InferenceRuntime(net.colour), InferenceRuntime(net.grayscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return route(x, self.colour, self.grayscale)


def runtime_for(net: nn.Module) -> InferenceRuntime | RoutedRuntime:
    """How a trained network runs at inference."""
    return RoutedRuntime(net) if isinstance(net, ByLookNetwork) else InferenceRuntime(net)


class FromFaces(nn.Module):
    """A part fed faces as `AgeEstimator.predict` takes them, uint8 NHWC: what its export reads."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.net(faces.permute(0, 3, 1, 2).float())


def export_parts(weights: Path) -> list[Path]:
    """Export each part of a checkpoint beside it, folded (`exported_parts`; needs the `onnx` package)."""
    net, card = load_checkpoint(weights)
    if not exportable(card):
        raise ValueError(f"{weights}: a model with a grayscale specialist runs in PyTorch only")
    opinion = {"opinion": net.opinion} if isinstance(net, SecondOpinionNetwork) else {}
    net = net.model if opinion else net
    parts = {"main": net.main, "edge": net.edge, **opinion} if isinstance(net, ByFrameNetwork) else {"main": net, **opinion}
    paths = part_paths(weights, card)
    for name, part in parts.items():
        size = part.cfg.image_size
        export(FromFaces(fold_batch_norms(part)), torch.zeros(2, size, size, 3, dtype=torch.uint8), paths[name], weights,
               ["ages"], {"x": {0: "faces"}, "ages": {0: "faces"}})
    return list(paths.values())


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

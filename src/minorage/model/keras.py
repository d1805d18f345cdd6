"""The original SSR-Net Keras weights (`../shared/models/ssrnet/*.h5`) read into `network.SSRNet`.

Layer by layer: Keras kernels transposed to PyTorch's order, and the dense layers fed by a
Flatten reordered from channels-last to channels-first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from minorage import config
from minorage.config import SSRNetConfig
from minorage.model.network import SSRNet

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

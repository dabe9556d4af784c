"""The SynthSeg U-Net in PyTorch, with exactly the semantics of ``morphometry.segment.networks`` (the ONNX graph).

Same-padded convolutions with bias and ELU, batch normalisation (epsilon 1e-3) after each level's
convolutions, the skip taken from the last encoder convolution *before* batch normalisation,
2x2x2 max pooling, nearest x2 upsampling, concatenation [skip, upsampled], a linear 1x1x1 head.
``forward`` returns logits; the softmax over channels is applied by the loss and by the export.
Parameter names map one-to-one onto the Keras layer names of :meth:`UNetSpec.layer_shapes`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from morphometry.segment.networks import BN_EPSILON, UNetSpec, Weights


class _ConvElu(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv3d(c_in, c_out, kernel, padding=kernel // 2, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(self.conv(x))


class UNet(nn.Module):
    """A U-Net described by a :class:`UNetSpec`; ``bn_momentum`` is PyTorch's (Keras 0.99 -> 0.01)."""

    def __init__(self, spec: UNetSpec, bn_momentum: float = 0.01):
        super().__init__()
        self.spec = spec
        shapes = spec.layer_shapes()
        self.convs = nn.ModuleDict()
        self.norms = nn.ModuleDict()
        for name, arrays in shapes.items():
            if name.startswith("bn_"):
                self.norms[name] = nn.BatchNorm3d(arrays[0][0], eps=BN_EPSILON, momentum=bn_momentum)
            elif name != "likelihood":
                k, _, _, c_in, c_out = arrays[0]
                self.convs[name] = _ConvElu(c_in, c_out, k)
        _, _, _, c_in, c_out = shapes["likelihood"][0]
        self.likelihood = nn.Conv3d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        skips = []
        for lev in range(s.levels):
            for c in range(s.convs_per_level):
                x = self.convs[f"conv_downarm_{lev}_{c}"](x)
            skips.append(x)
            x = self.norms[f"bn_down_{lev}"](x)
            if lev < s.levels - 1:
                x = F.max_pool3d(x, 2)
        for step in range(s.levels - 1):
            name = s.levels + step
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            if s.keeps_skip(step):
                x = torch.cat([skips[s.levels - 2 - step], x], dim=1)
            for c in range(s.convs_per_level):
                x = self.convs[f"conv_uparm_{name}_{c}"](x)
            x = self.norms[f"bn_up_{step}"](x)
        return self.likelihood(x)


def _kernel(conv: nn.Conv3d) -> np.ndarray:
    """PyTorch (C_out, C_in, kD, kH, kW) -> Keras (kD, kH, kW, C_in, C_out)."""
    return np.ascontiguousarray(conv.weight.detach().cpu().numpy().transpose(2, 3, 4, 1, 0), np.float32)


def keras_weights(model: UNet) -> Weights:
    """The trained weights as the Keras-layout dictionary that ``morphometry.segment.networks.unet_model`` reads."""
    out: Weights = {}
    as_np = lambda t: t.detach().cpu().numpy().astype(np.float32)
    for name, block in model.convs.items():
        out[name] = (_kernel(block.conv), as_np(block.conv.bias))
    for name, bn in model.norms.items():
        out[name] = (as_np(bn.weight), as_np(bn.bias), as_np(bn.running_mean), as_np(bn.running_var))
    out["likelihood"] = (_kernel(model.likelihood), as_np(model.likelihood.bias))
    return out


def _copy(target: torch.Tensor, array: np.ndarray) -> None:
    target.copy_(torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(target.device))


def _set_conv(conv: nn.Conv3d, kernel: np.ndarray, bias: np.ndarray) -> None:
    """Keras (kD, kH, kW, C_in, C_out) -> PyTorch (C_out, C_in, kD, kH, kW); inverse of :func:`_kernel`."""
    _copy(conv.weight, kernel.transpose(4, 3, 0, 1, 2))
    _copy(conv.bias, bias)


def load_keras_weights(model: UNet, weights: Weights) -> None:
    """Copy a Keras-layout weight dictionary (inverse of :func:`keras_weights`) into ``model``."""
    with torch.no_grad():
        for name, block in model.convs.items():
            _set_conv(block.conv, *weights[name])
        for name, bn in model.norms.items():
            for target, array in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), weights[name]):
                _copy(target, array)
        _set_conv(model.likelihood, *weights["likelihood"])

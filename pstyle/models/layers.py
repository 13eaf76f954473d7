"""Small building blocks shared by the networks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class AdaIN(nn.Module):
    """Adaptive instance norm: normalise away the content's feature statistics, impose the style's.

    The affine maps the mixed style/noise vector w to a per-channel scale and shift; scale is
    parameterised as 1 + gamma so a zero-initialised affine starts as plain instance norm.
    """

    def __init__(self, channels: int, w_dim: int) -> None:
        super().__init__()
        self.affine = nn.Linear(w_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        gamma, beta = self.affine(w).chunk(2, dim=1)  # (B, C) each
        return F.instance_norm(x) * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class ModulatedResBlock(nn.Module):
    """conv -> AdaIN -> ReLU -> conv -> AdaIN, plus identity: re-styles features at fixed resolution."""

    def __init__(self, channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.norm1 = AdaIN(channels, w_dim)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.norm2 = AdaIN(channels, w_dim)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x), w))
        return x + self.norm2(self.conv2(h), w)


def conv_in_relu(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    """Conv + instance norm + ReLU with 'same'-style padding for odd kernels and stride 1."""
    padding = (kernel - stride + 1) // 2
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding), nn.InstanceNorm2d(c_out), nn.ReLU())

"""Small building blocks shared by the networks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

_EPS = 1e-5


def spatial_stats(x: Tensor, correction: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(x minus its mean, the mean, the variance), the statistics per image and channel over H and W,
    (B,C,1,1) each; `correction` as `Tensor.var`'s.

    Two passes, the mean and then the mean squared deviation, whose centred map the callers reuse:
    torch's CPU `var` over the spatial dims ran 5-11x slower at the generator's map sizes, at the same
    float32 accuracy (docs/benchmarks.md, "Generator inference").
    """
    mean = x.mean(dim=(2, 3), keepdim=True)
    centered = x - mean
    var = centered.square().sum(dim=(2, 3), keepdim=True) / (x.shape[2] * x.shape[3] - correction)
    return centered, mean, var


def adain(feat: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Adaptive instance norm (Huang & Belongie): the content's channel statistics replaced by the
    style's. feat (B,C,H,W); mean and std (B,C,1,1)."""
    centered, _, var = spatial_stats(feat)
    return centered / (var + _EPS).sqrt() * std + mean


class FiLM(nn.Module):
    """Feature-wise scale and shift from the mapped style vector w: x * (1 + gamma) + beta.

    No normalisation: the statistics AdaIN imposed upstream survive, and the style only adjusts
    them. The affine is zero-initialised, so a new FiLM is the identity.
    """

    def __init__(self, channels: int, w_dim: int) -> None:
        super().__init__()
        self.affine = nn.Linear(w_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        gamma, beta = self.affine(w).chunk(2, dim=1)  # (B, C) each
        return x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class ModulatedConv(nn.Module):
    """3x3 conv (reflection padded: no dark borders) -> FiLM(w) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, w_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3)  # unpadded: the reflection pad is explicit (LoCon-mergeable)
        self.film = FiLM(c_out, w_dim)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return F.relu(self.film(self.conv(F.pad(x, (1, 1, 1, 1), mode="reflect")), w))


class ModulatedResBlock(nn.Module):
    """Two modulated convs plus identity: re-styles features at a fixed resolution."""

    def __init__(self, channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv1 = ModulatedConv(channels, channels, w_dim)
        self.conv2 = ModulatedConv(channels, channels, w_dim)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return x + self.conv2(self.conv1(x, w), w)

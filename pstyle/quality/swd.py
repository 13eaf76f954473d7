"""Sliced Wasserstein distance: the one implementation behind the SWD metric, the patch-SWD loss
and the feature-space texture loss.

Two sets of vectors are compared along random unit directions: project, sort, and compare the
sorted projections (1-D optimal transport). Image sets are turned into vectors as random 7x7x3
neighbourhoods of a Laplacian pyramid level, as in Karras et al. 2018.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

PATCH = 7  # neighbourhood side of the patch descriptors (7x7x3 = 147-D)


def random_patches(level: Tensor, n: int, gen: torch.Generator | None = None, eps: float = 1e-8) -> Tensor:
    """n random PATCHxPATCH neighbourhoods of a (B, C, H, W) level as (n, C*PATCH*PATCH), spread
    evenly over the B images, each channel normalised by the set's own mean and std.

    With `gen` the positions come from that (CPU) generator, so two sets drawn with equal seeds share
    positions; without it they come from the level's device RNG (a loss's fresh stochastic estimate).
    `eps` bounds the std of a constant channel (Karras' code would divide by zero there).
    """
    b, c, h, w = level.shape
    r, dev = PATCH // 2, level.device
    where = "cpu" if gen is not None else dev
    img = torch.arange(n, device=dev) * b // n  # image i*b//n: every image gets its share
    offsets = torch.arange(-r, r + 1, device=where)
    ys = (torch.randint(r, h - r, (n, 1), generator=gen, device=where) + offsets).to(dev)  # (n, 7) rows
    xs = (torch.randint(r, w - r, (n, 1), generator=gen, device=where) + offsets).to(dev)
    chan = torch.arange(c, device=dev)[None, :, None, None]
    patches = level[
        img[:, None, None, None], chan, ys[:, None, :, None], xs[:, None, None, :]
    ]  # (n, c, 7, 7)
    patches = patches - patches.mean(dim=(0, 2, 3), keepdim=True)
    patches = patches / patches.std(dim=(0, 2, 3), correction=0, keepdim=True).clamp_min(eps)
    return patches.flatten(1)


def random_directions(dim: int, n: int, like: Tensor, gen: torch.Generator | None = None) -> Tensor:
    """(dim, n) random unit directions on `like`'s device and dtype (drawn from `gen` on the CPU if given)."""
    if gen is None:
        dirs = torch.randn(dim, n, device=like.device, dtype=like.dtype)
    else:
        dirs = torch.randn(dim, n, generator=gen).to(like.device, like.dtype)
    return F.normalize(dirs, dim=0)


def sliced_distance(a: Tensor, b: Tensor, dirs: Tensor, power: int = 1) -> Tensor:
    """Mean |difference|^power of the sorted projections of `a` (..., N, C) and `b` (M, C) on `dirs`
    (C, D): sliced Wasserstein-1 (power 1) or its squared-error form (power 2, a smooth loss).

    When M != N, b's sorted projections are read at N evenly spaced quantiles, so a small output can
    be compared with a large pooled set.
    """
    pa = (a @ dirs).sort(dim=-2).values
    pb = (b @ dirs).sort(dim=-2).values
    if pb.shape[-2] != pa.shape[-2]:
        quantiles = torch.linspace(0, pb.shape[-2] - 1, pa.shape[-2], device=pb.device).round().long()
        pb = pb[..., quantiles, :]
    return (pa - pb).abs().pow(power).mean()

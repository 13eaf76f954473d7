"""Strong augmentation for few real photographs: random scaled crops, flips and colour jitter.

With a handful of photos, every sample must look new: a crop covering 25-100 % of the shorter
side at a random place, mirrored half the time, with brightness, contrast and saturation moved
by up to 20 %. All randomness comes from the caller's torch.Generator, so runs are reproducible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pstyle.models.colour import luma


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


def random_crop(image: Tensor, size: int, gen: torch.Generator, min_scale: float = 0.25) -> Tensor:
    """(3,H,W) -> (3,size,size): a random square crop of side in [min_scale, 1] x min(H,W), resized."""
    _, h, w = image.shape
    side = max(8, round(min(h, w) * _uniform(gen, min_scale, 1.0)))
    top = int(torch.randint(h - side + 1, (), generator=gen))
    left = int(torch.randint(w - side + 1, (), generator=gen))
    crop = image[:, top : top + side, left : left + side].unsqueeze(0)
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def color_jitter(image: Tensor, gen: torch.Generator, amount: float = 0.2) -> Tensor:
    """Brightness, contrast and saturation each scaled by a factor in [1 - amount, 1 + amount]."""
    image = image * _uniform(gen, 1 - amount, 1 + amount)
    mean = image.mean()
    image = (image - mean) * _uniform(gen, 1 - amount, 1 + amount) + mean
    gray = luma(image[None])[0]
    image = (image - gray) * _uniform(gen, 1 - amount, 1 + amount) + gray
    return image.clamp(0, 1)


def augment(image: Tensor, size: int, gen: torch.Generator, jitter: bool = True) -> Tensor:
    """A random crop, a coin-flip mirror and (optionally) colour jitter of one (3,H,W) image."""
    out = random_crop(image, size, gen)
    if torch.rand((), generator=gen).item() < 0.5:
        out = out.flip(-1)
    return color_jitter(out, gen) if jitter else out

"""Luma and chroma (BT.601 YCbCr on sRGB values), and the style's chroma imposed on an output.

Luma here is exactly what SSIM measures (`quality.metrics.ssim`), so a change of chroma alone
leaves an image's content SSIM as it was. That is what lets the generator take its colours from
the style set analytically, as AdaIN takes feature statistics: per image, the output's Cb/Cr
mean and spread are replaced by the style set's, and its luma is left alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pstyle.models.layers import spatial_stats

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # Rec. 601: R, G, B
_CB_SCALE, _CR_SCALE = 0.564, 0.713  # Cb = 0.564 (B - Y), Cr = 0.713 (R - Y)
COLOUR_DIM = 4  # a style set's Cb and Cr mean, then their log standard deviations
_EPS = 1e-5  # variance floor of the code's log-std, as the feature statistics' (`encoder`)
_STD_FLOOR = 1e-3  # an output with no chroma spread is shifted, not divided by zero


def luma(images: Tensor) -> Tensor:
    """(B,3,H,W) -> (B,1,H,W) Rec. 601 luma."""
    w = images.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    return (images * w).sum(dim=1, keepdim=True)


def to_luma_chroma(images: Tensor) -> tuple[Tensor, Tensor]:
    """(B,3,H,W) sRGB -> luma (B,1,H,W) and chroma (B,2,H,W) = (Cb, Cr)."""
    y = luma(images)
    cb = _CB_SCALE * (images[:, 2:3] - y)
    cr = _CR_SCALE * (images[:, 0:1] - y)
    return y, torch.cat([cb, cr], dim=1)


def from_luma_chroma(y: Tensor, chroma: Tensor) -> Tensor:
    """The inverse of `to_luma_chroma` (no clamping: out-of-gamut values are the caller's choice)."""
    r = y + chroma[:, 1:2] / _CR_SCALE
    b = y + chroma[:, 0:1] / _CB_SCALE
    g = (y - LUMA_WEIGHTS[0] * r - LUMA_WEIGHTS[2] * b) / LUMA_WEIGHTS[1]
    return torch.cat([r, g, b], dim=1)


def chroma_code(styles: Tensor) -> Tensor:
    """(B,K,3,H,W) style sets -> (B, COLOUR_DIM): Cb/Cr mean and log-std over every pixel of the set."""
    b, k, _, h, w = styles.shape
    _, chroma = to_luma_chroma(styles.reshape(b * k, 3, h, w).float())
    chroma = chroma.reshape(b, k, 2, h * w).transpose(1, 2).reshape(b, 2, -1)
    mean = chroma.mean(dim=2)
    var = (chroma - mean[:, :, None]).square().mean(dim=2)
    return torch.cat([mean, 0.5 * torch.log(var + _EPS)], dim=1).to(styles.dtype)


def impose_chroma(images: Tensor, colour_code: Tensor) -> Tensor:
    """Each image's chroma mean/std set to its (B, COLOUR_DIM) code's, luma kept; clamped to [0, 1].

    Computed in float32 whatever the input dtype (mixed precision would round the statistics).
    """
    y, chroma = to_luma_chroma(images.float())
    mean_t = colour_code[:, :2, None, None].float()
    std_t = colour_code[:, 2:, None, None].float().exp()
    centered, _, var = spatial_stats(chroma)
    chroma = centered * (std_t / (var.sqrt() + _STD_FLOOR)) + mean_t
    return from_luma_chroma(y, chroma).clamp(0, 1).to(images.dtype)

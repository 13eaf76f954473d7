"""Style encoder: a set of style images -> one style code."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pstyle.config import ModelConfig


class StyleEncoder(nn.Module):
    """Encodes K >= 1 style images of any size (>= 32 px) into one style code per set.

    Each image is summarised by channel means and standard deviations of its conv features
    (texture statistics, size-independent), then the set is mean-pooled so the code does not
    depend on the order or the number of images (a Deep Sets encoder).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.encoder_channels
        self.style_dim = cfg.style_dim
        self.convs = nn.Sequential(
            nn.Conv2d(3, c, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * c, 4 * c, 4, 2, 1), nn.LeakyReLU(0.2),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Linear(8 * c, 4 * c), nn.LeakyReLU(0.2), nn.Linear(4 * c, cfg.style_dim))

    def forward(self, styles: Tensor) -> Tensor:
        """styles: (B, K, 3, H, W) or (K, 3, H, W) in [0, 1] -> codes (B, style_dim) or (1, style_dim)."""
        if styles.dim() == 4:
            styles = styles.unsqueeze(0)
        assert styles.dim() == 5 and styles.shape[2] == 3, f"expected (B,K,3,H,W), got {tuple(styles.shape)}"
        b, k, _, h, w = styles.shape
        assert min(h, w) >= 32, f"style images must be at least 32 px, got {h}x{w}"
        feats = self.convs(styles.reshape(b * k, 3, h, w) * 2 - 1)  # (B*K, C, h', w')
        stats = torch.cat([feats.mean(dim=(2, 3)), feats.std(dim=(2, 3))], dim=1)  # (B*K, 2C)
        pooled = stats.reshape(b, k, -1).mean(dim=1)  # (B, 2C): permutation invariant
        # Codes live on a sphere of radius sqrt(D): a fixed scale keeps modulation stable across styles.
        return F.normalize(self.head(pooled), dim=1) * math.sqrt(self.style_dim)

"""Small U-Net that finds the subject of a content image (for region-only stylization)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import Tensor, nn

from pstyle.config import ModelConfig
from pstyle.store.uris import read_bytes


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU(),
    )  # fmt: skip


class Segmenter(nn.Module):
    """Two-level U-Net: skip connections keep mask edges sharp at full resolution."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.segmenter_channels
        self.down1, self.down2, self.mid = _block(3, c), _block(c, 2 * c), _block(2 * c, 4 * c)
        self.up2, self.up1 = _block(6 * c, 2 * c), _block(3 * c, c)
        self.head = nn.Conv2d(c, 1, 1)

    def forward(self, images: Tensor) -> Tensor:
        """images (B,3,H,W) in [0,1], H and W multiples of 4 -> subject logits (B,1,H,W)."""
        d1 = self.down1(images * 2 - 1)
        d2 = self.down2(F.max_pool2d(d1, 2))
        m = self.mid(F.max_pool2d(d2, 2))
        u2 = self.up2(torch.cat([F.interpolate(m, scale_factor=2.0, mode="nearest"), d2], dim=1))
        u1 = self.up1(torch.cat([F.interpolate(u2, scale_factor=2.0, mode="nearest"), d1], dim=1))
        return self.head(u1)

    @torch.no_grad()
    def predict_mask(self, images: Tensor) -> Tensor:
        """Binary subject mask (B,1,H,W): 1 where the subject is more likely than not."""
        return (self(images) > 0).to(images.dtype)

    def load_weights(self, uri: str) -> None:
        """Replace the weights with a user's safetensors file (path or s3:// URI); never unpickles."""
        try:
            state = load_safetensors(read_bytes(uri))
        except SafetensorError as exc:
            raise ValueError(f"{uri}: not a safetensors file ({exc})") from exc
        try:
            self.load_state_dict(state)
        except RuntimeError as exc:  # missing/unexpected keys or shape mismatches
            raise ValueError(f"{uri}: weights do not fit this segmenter: {str(exc).splitlines()[0]}") from exc

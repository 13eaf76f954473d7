"""Generator: content image + style code + noise -> stylized image, optionally inside a region."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pstyle.config import ModelConfig
from pstyle.models.layers import AdaIN, ModulatedResBlock, conv_in_relu

DOWNSAMPLING = 4  # two stride-2 convolutions: H and W must be multiples of this


class Generator(nn.Module):
    """Encoder -> style-modulated residual blocks -> decoder (the AdaIN / MUNIT family).

    The content encoder keeps layout; the style enters through AdaIN statistics driven by
    w = mapping(style_code). Noise maps join the content features at 1/4 resolution (as in
    Ulyanov et al.'s texture networks): the raw material for texture that smooth content lacks,
    and the reason different seeds give different details.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, w_dim = cfg.channels, cfg.style_dim
        self.noise_dim = cfg.noise_dim
        self.mask_feather = cfg.mask_feather
        self.mapping = nn.Sequential(
            nn.Linear(cfg.style_dim, w_dim), nn.LeakyReLU(0.2),
            nn.Linear(w_dim, w_dim), nn.LeakyReLU(0.2),
            nn.Linear(w_dim, w_dim),
        )  # fmt: skip
        self.encode = nn.Sequential(
            conv_in_relu(3, c, 7, 1), conv_in_relu(c, 2 * c, 4, 2), conv_in_relu(2 * c, 4 * c, 4, 2)
        )
        self.inject_noise = nn.Conv2d(4 * c + cfg.noise_dim, 4 * c, 1)
        self.blocks = nn.ModuleList(ModulatedResBlock(4 * c, w_dim) for _ in range(cfg.res_blocks))
        self.up1 = nn.Conv2d(4 * c, 2 * c, 3, 1, 1)
        self.up1_norm = AdaIN(2 * c, w_dim)
        self.up2 = nn.Conv2d(2 * c, c, 3, 1, 1)
        self.up2_norm = AdaIN(c, w_dim)
        self.to_rgb = nn.Conv2d(c, 3, 7, 1, 3)

    def forward(
        self,
        content: Tensor,
        style_code: Tensor,
        noise: Tensor,
        strength: float | Tensor = 1.0,
        mask: Tensor | None = None,
    ) -> Tensor:
        """content (B,3,H,W) in [0,1], style_code (B,D), noise (B,N,H/4,W/4) -> (B,3,H,W) in [0,1].

        `strength` (float or (B,)) and `mask` ((B,1,h,w), 1 = stylize) only blend the result with
        the content in pixel space, so strength 0 and mask 0 return the content exactly.
        """
        b, _, h, w = content.shape
        assert h % DOWNSAMPLING == 0 and w % DOWNSAMPLING == 0, f"H, W must be multiples of 4, got {h}x{w}"
        expected_noise = (b, self.noise_dim, h // DOWNSAMPLING, w // DOWNSAMPLING)
        assert noise.shape == expected_noise, f"noise {tuple(noise.shape)}, expected {expected_noise}"
        assert style_code.shape[0] == b, "one style code per content image"
        stylized = self.synthesize(content, self.mapping(style_code), noise)
        alpha = self.blend_weight(content, strength, mask)
        return content + alpha * (stylized - content)

    def synthesize(self, content: Tensor, w: Tensor, noise: Tensor) -> Tensor:
        """The full-strength stylization for mapped style vectors w (B, D)."""
        x = self.encode(content * 2 - 1)  # (B, 4c, H/4, W/4)
        x = self.inject_noise(torch.cat([x, noise.to(x.dtype)], dim=1))
        for block in self.blocks:
            x = block(x, w)
        x = F.relu(self.up1_norm(self.up1(F.interpolate(x, scale_factor=2.0, mode="nearest")), w))
        x = F.relu(self.up2_norm(self.up2(F.interpolate(x, scale_factor=2.0, mode="nearest")), w))
        return (torch.tanh(self.to_rgb(x)) + 1) / 2

    def blend_weight(self, content: Tensor, strength: float | Tensor, mask: Tensor | None) -> Tensor:
        """Per-pixel weight of the stylization: strength times the feathered mask, (B|1, 1, H|1, W|1)."""
        alpha = torch.as_tensor(strength, dtype=content.dtype, device=content.device).reshape(-1, 1, 1, 1)
        if mask is None:
            return alpha
        return alpha * feather(mask.to(content.dtype), content.shape[-2:], self.mask_feather)

    def make_noise(self, like: Tensor, seed: int | None = None) -> Tensor:
        """Standard-normal noise maps for a content batch `like`; a seed makes output reproducible."""
        b, _, h, w = like.shape
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        shape = (b, self.noise_dim, h // DOWNSAMPLING, w // DOWNSAMPLING)
        return torch.randn(shape, generator=gen).to(device=like.device, dtype=like.dtype)


def feather(mask: Tensor, size: tuple[int, int] | torch.Size, width: int) -> Tensor:
    """Soft-edged copy of a binary mask that stays exactly 0 wherever the mask is 0.

    Eroding by the blur width before the box blur keeps the ramp inside the region, so pixels
    outside a subject mask are never touched while the edge still blends smoothly.
    """
    mask = (
        F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=False)
        if mask.shape[-2:] != size
        else mask
    )
    pad = width // 2
    eroded = -F.max_pool2d(-mask, width, stride=1, padding=pad)
    return F.avg_pool2d(eroded, width, stride=1, padding=pad, count_include_pad=False).clamp(0, 1)

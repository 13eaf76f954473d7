"""Generator: content image + style code + noise -> stylized image, optionally inside a region."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pstyle.config import ModelConfig
from pstyle.models.backbone import TAP_CHANNELS, Trunk
from pstyle.models.colour import impose_chroma, luma
from pstyle.models.encoder import CODE_DIM, colour_part, split_code
from pstyle.models.layers import ModulatedConv, ModulatedResBlock, adain, spatial_stats

DOWNSAMPLING = 16  # the trunk's deepest stride: H and W must be multiples of this
NOISE_STRIDE = 4  # noise maps live at 1/4 resolution
BORDER = 8  # reflected pixels around the content while synthesizing (2 * BORDER divides by DOWNSAMPLING)


class DecoderStage(nn.Module):
    """Upsample x2, concatenate the (re-styled) skip features of that scale, two modulated convs."""

    def __init__(self, c_in: int, c_skip: int, c_out: int, w_dim: int) -> None:
        super().__init__()
        self.conv1 = ModulatedConv(c_in + c_skip, c_out, w_dim)
        self.conv2 = ModulatedConv(c_out, c_out, w_dim)

    def forward(self, x: Tensor, skip: Tensor, w: Tensor, noise: Tensor | None = None) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = self.conv1(torch.cat([x, skip], dim=1), w)
        if noise is not None:
            x = x + noise
        return self.conv2(x, w)


class Generator(nn.Module):
    """Frozen pretrained encoder -> AdaIN at every scale -> trained, style-modulated decoder.

    Layout is kept by construction: the decoder sees the content's own pretrained features at
    strides 16, 8, 4 and 2 (a U-Net over a frozen ImageNet encoder) plus its normalised luminance at
    full resolution. Style enters twice: AdaIN replaces every skip's channel statistics with the
    style code's (the analytic, zero-shot part, exact for any style image), and FiLM layers driven
    by w = mapping(code) let the decoder learn how those statistics should look as texture and
    colour. Last, the output's chroma mean and spread are set to the style set's (the code's colour
    part), its luma untouched: AdaIN matches each channel but not the correlations between channels
    where the photo's colour lives, so without this a grey style left the photo's colours showing.
    Noise maps join at 1/4 resolution: the raw material for texture, and the reason different seeds
    give different details.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, w_dim = cfg.channels, cfg.w_dim
        self.noise_dim = cfg.noise_dim
        self.mask_feather = cfg.mask_feather
        self.trunk = Trunk()
        self.mapping = nn.Sequential(
            nn.Linear(CODE_DIM, w_dim), nn.LeakyReLU(0.2),
            nn.Linear(w_dim, w_dim), nn.LeakyReLU(0.2),
            nn.Linear(w_dim, w_dim),
        )  # fmt: skip
        c2, c4, c8, c16 = TAP_CHANNELS
        self.bottom = ModulatedConv(c16, 4 * c, w_dim)
        self.blocks = nn.ModuleList(ModulatedResBlock(4 * c, w_dim) for _ in range(cfg.res_blocks))
        self.up8 = DecoderStage(4 * c, c8, 2 * c, w_dim)
        self.up4 = DecoderStage(2 * c, c4, 2 * c, w_dim)
        self.inject_noise = nn.Conv2d(cfg.noise_dim, 2 * c, 1)
        self.up2 = DecoderStage(2 * c, c2, c, w_dim)
        self.up1 = ModulatedConv(c + 1, c // 2, w_dim)
        self.to_rgb = nn.Conv2d(c // 2, 3, 3, 1, 1)

    def forward(
        self,
        content: Tensor,
        style_code: Tensor,
        noise: Tensor,
        strength: float | Tensor = 1.0,
        mask: Tensor | None = None,
    ) -> Tensor:
        """content (B,3,H,W) in [0,1], style_code (B,CODE_DIM), noise (B,N,H/4,W/4) -> (B,3,H,W).

        `strength` (float or (B,)) and `mask` ((B,1,h,w), 1 = stylize) only blend the result with
        the content in pixel space, so strength 0 and mask 0 return the content exactly.
        """
        b, _, h, w = content.shape
        if h % DOWNSAMPLING or w % DOWNSAMPLING:
            raise ValueError(f"H and W must be multiples of {DOWNSAMPLING}, got {h}x{w}")
        expected_noise = (b, self.noise_dim, h // NOISE_STRIDE, w // NOISE_STRIDE)
        if tuple(noise.shape) != expected_noise:
            raise ValueError(f"noise {tuple(noise.shape)}, expected {expected_noise}")
        if style_code.shape[0] != b:
            raise ValueError(f"one style code per content image: {style_code.shape[0]} codes, {b} images")
        return self.blend(content, self.synthesize(content, style_code, noise), strength, mask)

    def synthesize(self, content: Tensor, style_code: Tensor, noise: Tensor) -> Tensor:
        """The full-strength stylization, computed on the content with a reflected border, then cropped.

        Without the border the image edges are the network's zero padding: the outputs carried a
        bright 1-px line along the top and left and a dark one along the bottom. With it every output
        pixel is an interior pixel with real context on all sides.
        """
        content = F.pad(content, (BORDER,) * 4, mode="reflect")
        noise = F.pad(noise, (BORDER // NOISE_STRIDE,) * 4, mode="reflect")
        out = self._synthesize(content, style_code, noise)[..., BORDER:-BORDER, BORDER:-BORDER]
        return impose_chroma(out, colour_part(style_code))

    def _synthesize(self, content: Tensor, style_code: Tensor, noise: Tensor) -> Tensor:
        w = self.mapping(style_code)
        f2, f4, f8, f16 = (
            adain(f, mean.to(f.dtype), std.to(f.dtype))
            for f, (mean, std) in zip(self.trunk(content), split_code(style_code), strict=True)
        )
        x = self.bottom(f16, w)
        for block in self.blocks:
            x = block(x, w)
        x = self.up8(x, f8, w)
        x = self.up4(x, f4, w, noise=self.inject_noise(noise.to(x.dtype)))
        x = self.up2(x, f2, w)
        x = F.interpolate(x, size=content.shape[-2:], mode="bilinear", align_corners=False)
        x = self.up1(cat_channels(x, normalized_luminance(content)), w)
        return torch.sigmoid(self.to_rgb(x))

    def blend(
        self, content: Tensor, stylized: Tensor, strength: float | Tensor = 1.0, mask: Tensor | None = None
    ) -> Tensor:
        """The full-strength `stylized` mixed into `content` by strength and the feathered mask."""
        return content + self.blend_weight(content, strength, mask) * (stylized - content)

    def blend_weight(self, content: Tensor, strength: float | Tensor, mask: Tensor | None) -> Tensor:
        """Per-pixel weight of the stylization: strength times the feathered mask, (B|1, 1, H|1, W|1)."""
        alpha = torch.as_tensor(strength, dtype=content.dtype, device=content.device).reshape(-1, 1, 1, 1)
        if mask is None:
            return alpha
        return alpha * feather(mask.to(content.dtype), content.shape[-2:], self.mask_feather)

    def make_noise(self, like: Tensor, seed: int | None = None, rng: torch.Generator | None = None) -> Tensor:
        """Standard-normal noise maps for a content batch `like`, drawn from a fresh generator at
        `seed`, from the CPU generator `rng`, or else from the global RNG."""
        b, _, h, w = like.shape
        gen = rng if seed is None else torch.Generator().manual_seed(seed)
        shape = (b, self.noise_dim, h // NOISE_STRIDE, w // NOISE_STRIDE)
        return torch.randn(shape, generator=gen).to(device=like.device, dtype=like.dtype)


def cat_channels(x: Tensor, extra: Tensor) -> Tensor:
    """torch.cat([x, extra], dim=1), laid out as `x` is.

    The int8 convolutions hand back channels_last tensors, and torch.cat of one beside a plain map
    (the luma) takes a slow path, six times slower than writing both into a channels_last buffer
    (docs/benchmarks.md, "Serving variants"). A plain `x` (fp32, training) goes through torch.cat.
    """
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return torch.cat([x, extra], dim=1)
    shape = (x.shape[0], x.shape[1] + extra.shape[1], *x.shape[2:])
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    out[:, : x.shape[1]] = x
    out[:, x.shape[1] :] = extra
    return out


def normalized_luminance(images: Tensor) -> Tensor:
    """(B,3,H,W) -> (B,1,H,W) luma with zero mean and unit variance per image: edges without colour."""
    centered, _, var = spatial_stats(luma(images), correction=1)
    return centered / (var.sqrt() + 1e-3)


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

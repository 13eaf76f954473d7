"""Non-learned baselines, called exactly like the model: `fn(content (B,3,H,W), styles (K,3,H',W'))`.

`identity` is the floor for style match and the ceiling for content kept; `reinhard` is the classic
global colour transfer any learned model has to beat on style match.
"""

from collections.abc import Callable

import torch
from torch import Tensor

# sRGB (D65) linear RGB -> CIE XYZ. The white point is taken as M @ (1,1,1) so sRGB white maps to
# L=100, a=b=0 exactly, and the inverse matrix is computed from M so the round trip is exact.
_RGB_TO_XYZ = torch.tensor(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ],
    dtype=torch.float64,
)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)
_WHITE = _RGB_TO_XYZ.sum(dim=1)
_DELTA = 6 / 29  # CIE Lab: cube root above DELTA^3, linear segment below


def _mix(m: Tensor, x: Tensor) -> Tensor:
    """Apply a 3x3 colour matrix to (B,3,H,W)."""
    return torch.einsum("ij,bjhw->bihw", m.to(x), x)


def _srgb_to_linear(c: Tensor) -> Tensor:
    # Clamping inside the power keeps gradients finite on the branch torch.where discards.
    return torch.where(c <= 0.04045, c / 12.92, ((c.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: Tensor) -> Tensor:
    return torch.where(c <= 0.0031308, 12.92 * c, 1.055 * c.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in [0,1] (B,3,H,W) -> CIE Lab (D65), L in [0,100]; batched, differentiable, float32."""
    xyz = _mix(_RGB_TO_XYZ, _srgb_to_linear(rgb.float()))
    xyz = xyz / _WHITE.to(rgb.device, torch.float32)[:, None, None]
    f = torch.where(xyz > _DELTA**3, xyz.clamp_min(_DELTA**3) ** (1 / 3), xyz / (3 * _DELTA**2) + 4 / 29)
    fx, fy, fz = f.unbind(dim=1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """CIE Lab (D65) -> sRGB, unclamped (out-of-gamut colours leave [0,1]); inverse of `rgb_to_lab`."""
    lab = lab.float()
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], dim=1)
    xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4 / 29))
    xyz = xyz * _WHITE.to(lab.device, torch.float32)[:, None, None]
    return _linear_to_srgb(_mix(_XYZ_TO_RGB, xyz))


def identity(content: Tensor, styles: Tensor) -> Tensor:
    """Return the content unchanged."""
    return content


def reinhard(content: Tensor, styles: Tensor) -> Tensor:
    """Reinhard et al. 2001 colour transfer, in CIE Lab rather than the paper's l-alpha-beta.

    Each content image's per-channel Lab mean/std is matched to the statistics pooled over all pixels
    of all style images (the user's style set is one distribution, not K separate targets).
    """
    lab = rgb_to_lab(content)
    style_lab = rgb_to_lab(styles)
    mu_s = style_lab.mean(dim=(0, 2, 3))[:, None, None]
    std_s = style_lab.std(dim=(0, 2, 3), correction=0)[:, None, None]
    mu_c = lab.mean(dim=(2, 3), keepdim=True)
    std_c = lab.std(dim=(2, 3), correction=0, keepdim=True).clamp_min(1e-6)  # flat channel: just shift it
    out = (lab - mu_c) / std_c * std_s + mu_s
    return lab_to_rgb(out).clamp(0, 1).to(content.dtype)


BASELINES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"identity": identity, "reinhard": reinhard}

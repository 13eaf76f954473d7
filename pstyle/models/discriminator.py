"""Conditional PatchGAN discriminator with a projection head (Miyato & Koyama 2018)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from pstyle.config import ModelConfig
from pstyle.models.encoder import CODE_DIM


class Discriminator(nn.Module):
    """Judges, per patch, whether an image is a real example of the style its code describes.

    Projection: logits = w . phi(x) + <embed(code), phi(x)> at every patch, so the condition
    enters as an inner product rather than an input channel (stabler, Miyato & Koyama).
    Spectral norm on every layer bounds the Lipschitz constant.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.disc_channels
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(cfg.disc_layers):
            c_out = c * 2**i
            layers += [spectral_norm(nn.Conv2d(c_in, c_out, 4, 2, 1)), nn.LeakyReLU(0.2)]
            c_in = c_out
        layers += [spectral_norm(nn.Conv2d(c_in, c_in, 3, 1, 1)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.out = spectral_norm(nn.Conv2d(c_in, 1, 1))
        self.embed = spectral_norm(nn.Linear(CODE_DIM, c_in))

    def forward(self, images: Tensor, style_code: Tensor) -> Tensor:
        """images (B,3,H,W) in [0,1], style_code (B,D) -> patch logits (B,1,H/2^L,W/2^L)."""
        phi = self.features(images * 2 - 1)
        projection = (self.embed(style_code)[:, :, None, None] * phi).sum(dim=1, keepdim=True)
        return self.out(phi) + projection

"""Reference style-transfer networks, timed beside pstyle's generator in `pstyle bench generator`.

Speed only (random weights): the AdaIN architecture (Huang & Belongie 2017: VGG19 to relu4_1, AdaIN,
a decoder mirroring the encoder) and Johnson et al.'s (2016) feed-forward transformer network.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import vgg19

from pstyle.models.layers import adain


def _conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Reflection-padded conv + ReLU, as both reference decoders use."""
    return nn.Sequential(nn.ReflectionPad2d(kernel // 2), nn.Conv2d(c_in, c_out, kernel, stride), nn.ReLU())


class AdaINReference(nn.Module):
    """VGG19 to relu4_1 -> AdaIN with the style's relu4_1 statistics -> mirrored decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = vgg19(weights=None).features[:21]
        up = nn.Upsample(scale_factor=2, mode="nearest")
        self.decoder = nn.Sequential(
            _conv(512, 256), up, _conv(256, 256), _conv(256, 256), _conv(256, 256), _conv(256, 128),
            up, _conv(128, 128), _conv(128, 64), up, _conv(64, 64),
            nn.ReflectionPad2d(1), nn.Conv2d(64, 3, 3),
        )  # fmt: skip

    def forward(self, content: Tensor, style_feats: Tensor) -> Tensor:
        """content (B,3,H,W); style_feats: the style's relu4_1 map (B,512,h,w), encoded once per style."""
        f = self.encoder(content)
        mean = style_feats.mean(dim=(2, 3), keepdim=True)
        std = style_feats.std(dim=(2, 3), keepdim=True)
        return self.decoder(adain(f, mean, std))


class JohnsonReference(nn.Module):
    """conv 9x9 -> two stride-2 convs -> 5 residual blocks at 128 channels -> two upsampling convs."""

    def __init__(self) -> None:
        super().__init__()

        def norm_conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(
                nn.ReflectionPad2d(kernel // 2), nn.Conv2d(c_in, c_out, kernel, stride),
                nn.InstanceNorm2d(c_out, affine=True), nn.ReLU(),
            )  # fmt: skip

        self.down = nn.Sequential(norm_conv(3, 32, 9), norm_conv(32, 64, 3, 2), norm_conv(64, 128, 3, 2))
        self.res = nn.ModuleList(
            nn.Sequential(norm_conv(128, 128, 3), norm_conv(128, 128, 3)) for _ in range(5)
        )
        self.up1, self.up2 = norm_conv(128, 64, 3), norm_conv(64, 32, 3)
        self.out = nn.Sequential(nn.ReflectionPad2d(4), nn.Conv2d(32, 3, 9))

    def forward(self, content: Tensor) -> Tensor:
        x = self.down(content)
        for block in self.res:
            x = x + block(x)
        x = self.up1(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        x = self.up2(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.out(x)

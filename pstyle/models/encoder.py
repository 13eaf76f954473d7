"""Style encoder: a set of style images -> one style code (pretrained feature statistics)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pstyle.models.backbone import TAP_CHANNELS, Trunk
from pstyle.models.colour import COLOUR_DIM, chroma_code

TAPS_DIM = 2 * sum(TAP_CHANNELS)  # mean and log-std of every tap's channels
CODE_DIM = TAPS_DIM + COLOUR_DIM  # then the pixels' chroma mean and log-std
_EPS = 1e-5


class StyleEncoder(nn.Module):
    """Encodes K >= 1 style images of any size (>= 32 px) into one code per set.

    The code is the channel mean and log standard deviation of the pretrained trunk's features at
    strides 2-16, then of the pixels' chroma (Cb, Cr), pooled over every pixel of every image of
    the set (so it depends on neither the order nor the number of images). These are the
    statistics AdaIN imposes (Huang & Belongie) and the colours the generator's output takes: a
    code any photograph or artwork has, with nothing learned that could fail to generalise to an
    unseen style. Log-std keeps a learned per-user code (an adapter's) unconstrained.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trunk = Trunk()
        self.code_dim = CODE_DIM

    def forward(self, styles: Tensor) -> Tensor:
        """styles: (B, K, 3, H, W) or (K, 3, H, W) in [0, 1] -> codes (B, CODE_DIM) or (1, CODE_DIM)."""
        if styles.dim() == 4:
            styles = styles.unsqueeze(0)
        if styles.dim() != 5 or styles.shape[2] != 3:
            raise ValueError(f"style images must be (B, K, 3, H, W), got {tuple(styles.shape)}")
        b, k, _, h, w = styles.shape
        if min(h, w) < 32:
            raise ValueError(f"style images must be at least 32 px, got {h}x{w}")
        feats = self.trunk(styles.reshape(b * k, 3, h, w))
        stats = [pooled_stats(f.reshape(b, k, *f.shape[1:])) for f in feats]
        return torch.cat([*stats, chroma_code(styles).to(stats[0].dtype)], dim=1)


def codes_from_features(feats: list[Tensor], images: Tensor) -> Tensor:
    """One code per image (B, CODE_DIM) from the trunk's features of `images` (a set of one each)."""
    stats = [pooled_stats(f.unsqueeze(1)) for f in feats]
    return torch.cat([*stats, chroma_code(images.unsqueeze(1)).to(stats[0].dtype)], dim=1)


def pooled_stats(feats: Tensor) -> Tensor:
    """(B, K, C, H, W) -> (B, 2C): mean and log-std over all K images' pixels, per channel."""
    mean = feats.mean(dim=(1, 3, 4))
    var = (feats - mean[:, None, :, None, None]).square().mean(dim=(1, 3, 4))
    return torch.cat([mean, 0.5 * torch.log(var + _EPS)], dim=1)


def split_code(code: Tensor) -> list[tuple[Tensor, Tensor]]:
    """(B, CODE_DIM) -> per tap (mean, std), each (B, C, 1, 1): what AdaIN imposes at that tap.

    The code's colour part (`colour_part`) belongs to no tap and is left out.
    """
    out, start = [], 0
    for c in TAP_CHANNELS:
        mean, log_std = code[:, start : start + c], code[:, start + c : start + 2 * c]
        out.append((mean[:, :, None, None], log_std.exp()[:, :, None, None]))
        start += 2 * c
    return out


def colour_part(code: Tensor) -> Tensor:
    """(B, CODE_DIM) -> (B, COLOUR_DIM): the chroma statistics the output takes (`colour.impose_chroma`)."""
    return code[:, TAPS_DIM:]

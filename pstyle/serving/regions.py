"""Where a stylization applies: the whole image, the photo's subject, its background, or a mask the
user drew. The CLI, the replica and the HTTP API name regions and turn them into masks here."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pstyle.models.subjects import subject_mask

REGIONS = ("all", "subject", "background", "mask")


def check_region(region: str) -> str:
    if region not in REGIONS:
        raise ValueError(f"region must be one of {', '.join(REGIONS)}, got {region!r}")
    return region


def region_masks(
    regions: Sequence[str],
    content: Tensor,
    user_masks: Sequence[Tensor | None] | None = None,
    find_subject: Callable[[Tensor], Tensor] = subject_mask,
) -> Tensor | None:
    """(B, 1, H, W) masks for a batch of `content` (B, 3, H, W), one region per image; None when every
    region is "all". A "mask" region takes its (1, h, w) user mask, resized to the content (nearest).

    The subject (`find_subject`, by default the subject head on the pretrained network plus the face
    prior, `models/subjects.py`) is computed once for the batch, and only when a region needs it.
    """
    if all(check_region(r) == "all" for r in regions):
        return None
    user_masks = user_masks or [None] * len(regions)
    subject = find_subject(content) if any(r in ("subject", "background") for r in regions) else None
    ones = content.new_ones(content.shape[-2:])[None]
    masks = []
    for i, region in enumerate(regions):
        if region == "mask":
            if user_masks[i] is None:
                raise ValueError("region 'mask' needs a mask image")
            user_mask = user_masks[i][None].to(content)
            masks.append(F.interpolate(user_mask, size=content.shape[-2:], mode="nearest")[0])
        elif region == "subject":
            masks.append(subject[i])
        elif region == "background":
            masks.append(1 - subject[i])
        else:
            masks.append(ones)
    return torch.stack(masks)

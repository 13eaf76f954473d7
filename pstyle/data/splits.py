"""The hold-out split of a user's style images, the same everywhere: training, evaluation,
personalization and the adapter jobs all keep the same images out for a given (seed, user)."""

from __future__ import annotations

import zlib

import torch
from torch import Tensor


def holdout_split(images: Tensor, user_id: str, holdout: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(train, held-out) images of a user; at least one image always stays for training.

    The permutation is keyed by (seed, user id) alone, so a user's split does not depend on which
    other users exist or which group they train in, and can be reproduced to check an adapter.
    """
    if holdout < 0:
        raise ValueError(f"holdout must be >= 0, got {holdout}")
    n_hold = min(holdout, len(images) - 1)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(user_id.encode()))
    order = torch.randperm(len(images), generator=gen)
    return images[order[n_hold:]], images[order[:n_hold]]

"""Per-user randomness: the hold-out split of a user's style images, the same everywhere (training,
evaluation, personalization and the adapter jobs keep the same images out for a given (seed, user)),
and the generator behind every other random draw made for one user."""

from __future__ import annotations

import zlib

import torch
from torch import Tensor


def user_generator(user_id: str, seed: int = 0, stream: str = "") -> torch.Generator:
    """A CPU generator keyed by (seed, stream, user id) alone, so what is drawn for a user does not
    depend on which other users exist, the order they train in, or what the process drew before.
    Each `stream` (a purpose, such as "personalize") gets its own sequence."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32((stream + user_id).encode()))


def holdout_split(images: Tensor, user_id: str, holdout: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(train, held-out) images of a user; at least one image always stays for training.

    The permutation is keyed by (seed, user id) alone, so a user's split does not depend on which
    other users exist or which group they train in, and can be reproduced to check an adapter.
    """
    if holdout < 0:
        raise ValueError(f"holdout must be >= 0, got {holdout}")
    n_hold = min(holdout, len(images) - 1)
    order = torch.randperm(len(images), generator=user_generator(user_id, seed))
    return images[order[n_hold:]], images[order[:n_hold]]

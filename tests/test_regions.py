"""Regions and ratings: the one rule each that the CLI, the replica and the HTTP API share."""

from __future__ import annotations

import pytest
import torch

from pstyle.ratings import parse_rating, rating_weight
from pstyle.serving.regions import region_masks


def test_region_masks_mix_regions_in_one_batch_and_fit_user_masks():
    content = torch.rand(3, 3, 32, 48)
    half = torch.zeros(1, 8, 12)
    half[..., :6] = 1  # the left half, drawn at a quarter of the content's size
    calls = []

    def subject(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return torch.zeros(len(x), 1, *x.shape[-2:])

    masks = region_masks(["all", "mask", "background"], content, [None, half, None], find_subject=subject)
    assert masks.shape == (3, 1, 32, 48) and calls == [3]  # the subject is found once for the batch
    assert masks[0].min() == 1 and masks[2].min() == 1  # everything; the complement of no subject
    assert masks[1, 0, :, :24].min() == 1 and masks[1, 0, :, 24:].max() == 0
    assert region_masks(["all", "all"], content, find_subject=subject) is None and calls == [3]
    with pytest.raises(ValueError, match="region must be one of"):
        region_masks(["face"], content)
    with pytest.raises(ValueError, match="needs a mask image"):
        region_masks(["mask"], content[:1])


@pytest.mark.parametrize(
    ("value", "expected"), [(1, 1.0), (5, 5.0), (3.5, 3.5), ("up", 5.0), ("down", 1.0), (0, None), (6, None),
                            (True, None), ("5", None), (None, None)],
)  # fmt: skip
def test_one_rating_rule(value, expected):
    assert parse_rating(value) == expected


def test_rating_weights_pull_liked_and_push_disliked():
    assert (rating_weight(5.0), rating_weight(3.0), rating_weight(1.0)) == (1.0, 0.0, -1.0)

"""The rating rule, shared by the HTTP API, the A/B report and personalization: a rating is 1-5,
or "up" (5) / "down" (1); anything else is not a rating."""

from __future__ import annotations

from typing import Any

THUMBS = {"up": 5, "down": 1}


def parse_rating(value: Any) -> float | None:
    """A rating as a number 1-5; None for anything else (booleans and out-of-range numbers too)."""
    value = THUMBS.get(value, value) if isinstance(value, str) else value
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 5:
        return None
    return float(value)


def rating_weight(rating: float) -> float:
    """A rating as a feedback weight in [-1, 1]: liked (> 3) pulls toward, disliked (< 3) pushes away."""
    return (rating - 3) / 2

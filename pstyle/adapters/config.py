"""Adapter configuration: what a per-user adapter is (rank, scale, which layers) and its error type."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from pstyle.config import from_dict

# Glob patterns over `Generator.named_modules()` names: where an adapter has the most effect per byte.
# Style enters the decoder through its FiLM affines (per-channel scale and shift at every stage) and is
# rendered into texture by the decoder's convolutions at 1/8 to full resolution, the 1x1 conv that
# turns noise into grain, and the output conv that sets the colours.
# Left out: the frozen pretrained trunk (shared perception, never personalised); the 1/16-resolution
# bottom and residual blocks (the widest layers: a rank-8 adapter on the default model stays under
# 200 KB without them, and AdaIN there already imposes the user's code);
# and the mapping network (w = mapping(code) is one vector per user, and the adapter's learned style
# code already moves it). Each is one pattern away (e.g. "blocks.*.conv") when a larger adapter is fine.
DEFAULT_TARGETS: tuple[str, ...] = (
    "up*.film.affine",
    "up*.conv*.conv",
    "up1.conv",
    "inject_noise",
    "to_rgb",
)


class AdapterError(ValueError):
    """An adapter does not fit this base model, or its files are missing, corrupt or inconsistent."""


@dataclass
class AdapterConfig:
    """A low-rank adapter over the frozen generator (LoRA for Linear, LoCon for Conv2d)."""

    rank: int = 8  # r: inner width of every down/up pair; size and capacity grow linearly with it
    alpha: float = 8.0  # delta scale is alpha / rank, so changing rank keeps the update's magnitude
    target_modules: tuple[str, ...] = DEFAULT_TARGETS  # fnmatch globs over generator module names
    dropout: float = 0.0  # on the adapter's input path, training only (few-shot users overfit)

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)  # JSON gives lists back
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one layer pattern")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        return from_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AdapterConfig:
        return cls.from_dict(json.loads(text))

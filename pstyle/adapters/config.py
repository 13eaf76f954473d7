"""Adapter configuration: what a per-user adapter is (rank, scale, which layers) and its error type."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from pstyle.config import from_dict

# Glob patterns over `Generator.named_modules()` names. Style enters an AdaIN generator through the
# AdaIN affines (per-channel scale/shift of every res block and decoder stage) and is rendered into
# texture by the decoder's up convolutions and by the 1x1 conv that turns noise maps into grain.
# Left out, to keep a rank-8 adapter on the default model under 200 KB (it is ~160 KB):
#   blocks.*.conv*  8 LoCon 3x3 128->128 convs are 82k parameters (328 KB) on their own, and the
#                   res blocks are already re-styled through their (targeted) AdaIN affines;
#   to_rgb          out=3 caps its delta at rank 3, yet a 7x7 LoCon down costs 12.5k parameters, and the
#                   output colours are already steerable through up2_norm's AdaIN just before it;
#   mapping         w = mapping(style_code) is one vector per user, and the adapter's learned style
#                   code already moves it, so a mapping adapter would be redundant.
# Each of these is one pattern away (e.g. "blocks.*.conv*") when a larger adapter is acceptable.
DEFAULT_TARGETS: tuple[str, ...] = (
    "blocks.*.norm*.affine",
    "up*_norm.affine",
    "inject_noise",
    "up1",
    "up2",
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

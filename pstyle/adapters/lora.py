"""LoRA wrappers around the frozen generator's Linear and Conv2d layers (PEFT's layer.py, trimmed).

A wrapper keeps the original layer as `base_layer` and any number of named adapters, each a
down/up pair whose product is a low-rank weight delta: W' = W + scale * up @ down. The base class
holds everything that does not depend on the layer type (adapter bookkeeping, merge/unmerge, the
forward dispatch); the subclasses say how to build a pair, compose it into a weight, and apply the
layer with a replaced weight or with one adapter per sample.

The forward has three modes:
  * plain: base(x) + the active adapter's delta (None, disabled or merged: base(x) alone);
  * `PerSample` route: each sample has its own (down, up), the mixed-adapter batch of AdapterBank;
  * `Merged` route: the layer runs with a replacement weight, the grouped path of AdapterBank.
Routes are set by AdapterBank for the duration of one forward and override the plain mode.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AdapterError(ValueError):
    """An adapter does not fit this base model, or its files are missing, corrupt or inconsistent."""


class PerSample(NamedTuple):
    """One adapter per sample: weights gathered per sample, `up` already multiplied by its scale."""

    down: Tensor  # (B, r, in) or (B, r, in, k, k)
    up: Tensor  # (B, out, r)


class Merged(NamedTuple):
    """Run the layer with this weight in place of the base weight (base + one merged delta)."""

    weight: Tensor


class LoRALayer(nn.Module):
    """Base for LoRA wrappers: named adapters over one frozen `base_layer`."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.lora_down = nn.ModuleDict()
        self.lora_up = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.active_adapter: str | None = None
        self.merged_adapter: str | None = None
        self.disabled = False
        self.route: PerSample | Merged | None = None

    # --- what each layer type provides -------------------------------------------------------------
    def make_pair(self, rank: int) -> tuple[nn.Module, nn.Module]:
        """A fresh (down, up) pair on the base weight's device and dtype."""
        raise NotImplementedError

    def compose(self, down: Tensor, up: Tensor) -> Tensor:
        """The base-weight-shaped product of a down weight and an up weight (unscaled)."""
        raise NotImplementedError

    def base_forward(self, x: Tensor, weight: Tensor) -> Tensor:
        """The base layer's operation with `weight` in place of its own (bias and hyperparameters kept)."""
        raise NotImplementedError

    def per_sample_delta(self, x: Tensor, route: PerSample) -> Tensor:
        """Adapter output for a batch whose sample i uses route.down[i], route.up[i]; no loop over samples."""
        raise NotImplementedError

    # --- adapters ---------------------------------------------------------------------------------
    def add_adapter(
        self, name: str, rank: int, alpha: float, dropout: float = 0.0, rng: torch.Generator | None = None
    ) -> None:
        """Add adapter `name`: kaiming `down` (drawn from `rng`, or the global RNG) and zero `up` (as
        PEFT), an exact no-op until trained."""
        if name in self.lora_down:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        down, up = self.make_pair(rank)
        init = torch.empty(down.weight.shape)  # drawn on the CPU, so a CPU `rng` serves any device
        nn.init.kaiming_uniform_(init, a=math.sqrt(5), generator=rng)
        with torch.no_grad():
            down.weight.copy_(init)
        nn.init.zeros_(up.weight)
        self.lora_down[name], self.lora_up[name] = down, up
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling[name] = alpha / rank

    def remove_adapter(self, name: str) -> None:
        if self.merged_adapter == name:
            self.unmerge()
        if self.active_adapter == name:
            self.active_adapter = None
        for store in (self.lora_down, self.lora_up, self.lora_dropout):
            del store[name]
        del self.scaling[name]

    @property
    def adapter_names(self) -> list[str]:
        return list(self.lora_down)

    def get_delta_weight(self, name: str) -> Tensor:
        return self.compose(self.lora_down[name].weight, self.lora_up[name].weight) * self.scaling[name]

    def weight_with(self, down: Tensor, up: Tensor) -> Tensor:
        """Base weight plus compose(down, up): a new tensor; the shared base weight is never touched."""
        return self.base_layer.weight + self.compose(down, up).to(self.base_layer.weight.dtype)

    @torch.no_grad()
    def merged_weight(self, name: str, safe: bool = True) -> Tensor:
        """The base weight with adapter `name` folded in, as a new tensor; nothing is written.

        Refuses (ValueError) while another adapter is merged and, with `safe`, when the result holds
        NaN/Inf, so a diverged adapter can never poison the shared weights.
        """
        if self.merged_adapter is not None:
            raise ValueError(f"adapter {self.merged_adapter!r} is merged; unmerge it before merging {name!r}")
        weight = self.base_layer.weight
        merged = weight + self.get_delta_weight(name).to(weight.dtype)
        if safe and not torch.isfinite(merged).all():
            raise ValueError(f"merging adapter {name!r} gives non-finite weights; refused")
        return merged

    @torch.no_grad()
    def merge(self, name: str, safe: bool = True) -> None:
        """Fold adapter `name` into the base weight (one adapter at a time; merging it again is a no-op)."""
        if self.merged_adapter != name:
            self.base_layer.weight.copy_(self.merged_weight(name, safe))
            self.merged_adapter = name

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged delta again (exact up to rounding; do not train while merged)."""
        if self.merged_adapter is None:
            return
        weight = self.base_layer.weight
        weight.sub_(self.get_delta_weight(self.merged_adapter).to(weight.dtype))
        self.merged_adapter = None

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.route, Merged):
            return self.base_forward(x, self.route.weight)
        out = self.base_layer(x)
        if isinstance(self.route, PerSample):
            return out + self.per_sample_delta(x, self.route)
        name = self.active_adapter
        if self.disabled or self.merged_adapter is not None or name is None or name not in self.lora_down:
            return out
        return out + self.lora_up[name](self.lora_down[name](self.lora_dropout[name](x))) * self.scaling[name]


class LoRALinear(LoRALayer):
    """LoRA on nn.Linear: down Linear(in, r), up Linear(r, out), no biases."""

    def make_pair(self, rank: int) -> tuple[nn.Module, nn.Module]:
        base, kw = self.base_layer, _factory(self.base_layer)
        return nn.Linear(base.in_features, rank, bias=False, **kw), nn.Linear(
            rank, base.out_features, bias=False, **kw
        )

    def compose(self, down: Tensor, up: Tensor) -> Tensor:
        return up @ down  # (out, r) @ (r, in)

    def base_forward(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight, self.base_layer.bias)

    def per_sample_delta(self, x: Tensor, route: PerSample) -> Tensor:
        h = torch.einsum("b...i,bri->b...r", x, route.down)
        return torch.einsum("b...r,bor->b...o", h, route.up)


class LoRAConv2d(LoRALayer):
    """LoCon on nn.Conv2d: down Conv2d(in, r) with the base's kernel/stride/padding/dilation, up 1x1.

    A 1x1 conv after a conv is a conv, so up∘down composes exactly into the base kernel shape and
    merging reproduces the unmerged forward (groups=1 and zero padding only, checked).
    """

    def __init__(self, base_layer: nn.Conv2d) -> None:
        if base_layer.groups != 1 or base_layer.padding_mode != "zeros":
            raise AdapterError(f"LoRAConv2d supports groups=1 and zero padding only, got {base_layer}")
        super().__init__(base_layer)

    def make_pair(self, rank: int) -> tuple[nn.Module, nn.Module]:
        b, kw = self.base_layer, _factory(self.base_layer)
        down = nn.Conv2d(
            b.in_channels, rank, b.kernel_size, b.stride, b.padding, b.dilation, bias=False, **kw
        )
        return down, nn.Conv2d(rank, b.out_channels, 1, bias=False, **kw)

    def compose(self, down: Tensor, up: Tensor) -> Tensor:
        return torch.einsum("or,rikl->oikl", up.flatten(1), down)  # up (out, r[, 1, 1]), down (r, in, k, k)

    def base_forward(self, x: Tensor, weight: Tensor) -> Tensor:
        """Through the base layer's own convolution, so an int8 base quantizes the merged weight."""
        return self.base_layer._conv_forward(x, weight, self.base_layer.bias)

    def per_sample_delta(self, x: Tensor, route: PerSample) -> Tensor:
        """Grouped conv: the batch becomes B groups of channels, each convolved with its own down."""
        b = self.base_layer
        n, c, h, w = x.shape
        down = route.down  # (B, r, in, k, k)
        rank = down.shape[1]
        hidden = F.conv2d(
            x.reshape(1, n * c, h, w), down.reshape(n * rank, *down.shape[2:]), None,
            b.stride, b.padding, b.dilation, groups=n,
        )  # fmt: skip
        hidden = hidden.reshape(n, rank, *hidden.shape[-2:])
        return torch.einsum("brhw,bor->bohw", hidden, route.up)


WRAPPERS: dict[type[nn.Module], type[LoRALayer]] = {nn.Linear: LoRALinear, nn.Conv2d: LoRAConv2d}


def wrapper_type(module: nn.Module) -> type[LoRALayer] | None:
    """The LoRA wrapper for a layer, subclasses included: an int8 Conv2d is adapted like a float one."""
    return next((wrapper for kind, wrapper in WRAPPERS.items() if isinstance(module, kind)), None)


def _factory(layer: nn.Module) -> dict[str, torch.device | torch.dtype]:
    return {"device": layer.weight.device, "dtype": layer.weight.dtype}

"""AdapterBank: many users' adapters resident on one device, mixed freely within one batch.

Serving personalised style means batches whose samples belong to different users. As in
S-LoRA/Punica, the bank keeps every resident adapter's weights stacked per layer in a fixed pool
of slots (slot 0 is all zeros: the base model), so ONE forward serves a batch with a different
adapter per sample: Linear layers gather per-sample weights and use batched einsums, Conv2d
layers a grouped convolution with one group per sample (`LoRALayer.per_sample_delta`).
The alternative grouped path merges each distinct adapter into a copy of the weights and runs one
pass per adapter (what PEFT's per-sample `adapter_names` effectively does): no extra work per
sample, but one pass per distinct adapter. `choose_path` picks between the two.

Memory tiers, as in LoRAX / vLLM: device slots (bounded in bytes, least-recently-used evicted) ->
host copies of evicted adapters (bounded, LRU; re-adding one is a copy) -> disk (the caller's:
`io.read_adapter` then `add`). Slots are preallocated, so the device footprint never grows.

Concurrency: a forward sets routes on the generator's shared LoRA wrappers for its duration, so
forwards over one generator must not overlap. The bank's lock serialises its own calls; do not
run other forwards of the same generator (or a second bank over it) concurrently.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn

from pstyle.adapters.inject import style_dim, wrap_modules
from pstyle.adapters.lora import AdapterError, Merged, PerSample
from pstyle.config import AdapterConfig

PathName = Literal["mixed", "grouped"]

# Largest share of distinct adapters in a batch (the base counts as one) for which the grouped path is
# chosen, per device type; override per bank. Grouped pays one pass per adapter; mixed pays per-sample
# low-rank convs in one pass. On CPU a batch-1 pass is as efficient per image as a large batch, and
# `pstyle bench adapters` finds grouped faster than mixed at every k it tries (docs/benchmarks.md),
# so the CPU rule is "always grouped". On a GPU small passes leave the device idle (launch-bound), so
# only a single-adapter batch is grouped until a GPU run measures it.
DEFAULT_GROUPED_MAX_FRACTION: dict[str, float] = {"cpu": 1.0, "cuda": 0.0}


def choose_path(
    device: torch.device | str,
    batch: int,
    n_distinct: int,
    grouped_max_fraction: Mapping[str, float] = DEFAULT_GROUPED_MAX_FRACTION,
) -> PathName:
    """'grouped' when n_distinct <= max(1, fraction * batch) for this device type, else 'mixed'.

    A batch with one adapter is always grouped (a single merged pass); unknown device types use 0.
    """
    fraction = grouped_max_fraction.get(torch.device(device).type, 0.0)
    return "grouped" if n_distinct <= max(1.0, fraction * batch) else "mixed"


class AdapterBank:
    """Device-resident, LRU-managed stacks of per-user adapters over one shared generator."""

    def __init__(
        self,
        generator: nn.Module,
        capacity_bytes: int,
        device: torch.device | str,
        config: AdapterConfig | None = None,
        host_capacity_bytes: int | None = None,
        grouped_max_fraction: Mapping[str, float] | None = None,
    ) -> None:
        """`config` fixes the served layers and the slot rank (default AdapterConfig()); adapters of lower
        rank or on a subset of those layers fit too. Host spill defaults to 4x the device capacity."""
        self.generator = generator
        self.config = config or AdapterConfig()
        self.device = torch.device(device)
        self.set_path_rule(grouped_max_fraction)
        self.layers = wrap_modules(generator, self.config.target_modules)
        rank = self.config.rank
        shapes: dict[str, tuple[int, ...]] = {"style_code": (style_dim(generator),)}
        for name, layer in self.layers.items():
            out_features, *in_shape = layer.base_layer.weight.shape  # (out, in) or (out, in, k, k)
            shapes[f"{name}.lora_down"] = (rank, *in_shape)
            shapes[f"{name}.lora_up"] = (out_features, rank)
        dtype = next(iter(self.layers.values())).base_layer.weight.dtype
        self.slot_nbytes = sum(math.prod(s) for s in shapes.values()) * dtype.itemsize
        self.n_slots = capacity_bytes // self.slot_nbytes
        if self.n_slots < 1:
            raise ValueError(f"capacity {capacity_bytes} B holds no adapter ({self.slot_nbytes} B each)")
        host_capacity = 4 * capacity_bytes if host_capacity_bytes is None else host_capacity_bytes
        self.n_host = host_capacity // self.slot_nbytes
        self._stacks = {
            key: torch.zeros((self.n_slots + 1, *shape), device=self.device, dtype=dtype)
            for key, shape in shapes.items()
        }  # slot 0 stays zero: samples without an adapter
        self._resident: OrderedDict[str, int] = OrderedDict()  # user -> slot, least recently used first
        self._free = list(range(self.n_slots, 0, -1))
        self._host: OrderedDict[str, dict[str, Tensor]] = OrderedDict()  # evicted slot rows, on CPU
        self._lock = threading.RLock()

    def set_path_rule(self, grouped_max_fraction: Mapping[str, float] | None) -> None:
        """Override `choose_path`'s fraction per device type (what `pstyle bench adapters` measured on
        this hardware); device types left out keep the built-in rule."""
        self.grouped_max_fraction = {**DEFAULT_GROUPED_MAX_FRACTION, **(grouped_max_fraction or {})}

    # --- residency --------------------------------------------------------------------------------
    def __contains__(self, user_id: object) -> bool:
        return user_id in self._resident

    @property
    def resident(self) -> list[str]:
        """Users on the device, least recently used first."""
        return list(self._resident)

    @property
    def spilled(self) -> list[str]:
        """Users evicted to host memory, least recently evicted first."""
        return list(self._host)

    def spilled_tensors(self, user_id: str) -> dict[str, Tensor]:
        """What host spill holds for `user_id` (CPU tensors): the host cost of one cached adapter."""
        return dict(self._host[user_id])

    def add(self, user_id: str, state: Mapping[str, Tensor], config: AdapterConfig | None = None) -> None:
        """Put a user's adapter state (`adapter_state_dict` keys) on the device, evicting the LRU user if
        full; `config` gives its scale (default: the bank's). Replaces any older copy of that user."""
        rows = self._rows(state, config or self.config)
        with self._lock:
            self._host.pop(user_id, None)
            self._place(user_id, rows)

    def evict(self, user_id: str) -> None:
        """Move a user's adapter from the device to host memory (dropping the oldest host copies)."""
        with self._lock:
            slot = self._resident.pop(user_id)
            if self.n_host > 0:
                self._host[user_id] = {key: s[slot].to("cpu", copy=True) for key, s in self._stacks.items()}
                while len(self._host) > self.n_host:
                    self._host.popitem(last=False)
            self._free.append(slot)

    def restore(self, user_id: str) -> bool:
        """Make a user resident from the host copy if needed; False if it is on neither (load from disk)."""
        with self._lock:
            if user_id in self._resident:
                self._resident.move_to_end(user_id)
            elif user_id in self._host:
                self._place(user_id, self._host.pop(user_id))
            else:
                return False
            return True

    def style_code(self, user_id: str) -> Tensor:
        """The user's learned style code (D,), from the device or the host copy."""
        with self._lock:
            if user_id in self._resident:
                return self._stacks["style_code"][self._resident[user_id]].clone()
            if user_id in self._host:
                return self._host[user_id]["style_code"].to(self.device)
            raise KeyError(f"adapter for user {user_id!r} is not in the bank")

    # --- forward passes ---------------------------------------------------------------------------
    @torch.no_grad()
    def forward(
        self,
        content: Tensor,
        style_codes: Tensor,
        noise: Tensor,
        adapter_ids: list[str | None],
        strength: float | Tensor = 1.0,
        mask: Tensor | None = None,
    ) -> Tensor:
        """The generator's forward where sample i uses user adapter_ids[i] (None: base), in one pass."""
        with self._lock:
            slots = torch.tensor(self._slots(adapter_ids, content.shape[0]), device=self.device)
            routes = {name: PerSample(*self._weights(name, slots)) for name in self.layers}
            with self._routed(routes):
                return self.generator(content, style_codes, noise, strength=strength, mask=mask)

    @torch.no_grad()
    def forward_grouped(
        self,
        content: Tensor,
        style_codes: Tensor,
        noise: Tensor,
        adapter_ids: list[str | None],
        strength: float | Tensor = 1.0,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Same result as `forward`: one pass per distinct adapter, merged into copies of the weights."""
        batch = content.shape[0]
        with self._lock:
            groups: dict[int, list[int]] = {}
            for i, slot in enumerate(self._slots(adapter_ids, batch)):
                groups.setdefault(slot, []).append(i)
            out = torch.empty_like(content)
            for slot, indices in groups.items():
                idx = torch.tensor(indices, device=content.device)
                routes = {
                    name: Merged(layer.weight_with(*self._weights(name, slot)))
                    for name, layer in self.layers.items()
                }
                with self._routed(routes):
                    out[idx] = self.generator(
                        content[idx], style_codes[idx], noise[idx],
                        strength=_take(strength, idx, batch), mask=_take(mask, idx, batch),
                    )  # fmt: skip
            return out

    def forward_auto(
        self,
        content: Tensor,
        style_codes: Tensor,
        noise: Tensor,
        adapter_ids: list[str | None],
        strength: float | Tensor = 1.0,
        mask: Tensor | None = None,
    ) -> Tensor:
        """`forward` or `forward_grouped`, whichever `choose_path` expects to be faster here."""
        path = choose_path(content.device, len(adapter_ids), len(set(adapter_ids)), self.grouped_max_fraction)
        run = self.forward if path == "mixed" else self.forward_grouped
        return run(content, style_codes, noise, adapter_ids, strength=strength, mask=mask)

    # --- internals --------------------------------------------------------------------------------
    def _rows(self, state: Mapping[str, Tensor], config: AdapterConfig) -> dict[str, Tensor]:
        """One slot's contents from an adapter state: rank zero-padded, scale folded into `up`, on CPU."""
        state = dict(state)
        rows = {key: torch.zeros(stack.shape[1:], dtype=stack.dtype) for key, stack in self._stacks.items()}
        for name in self.layers:
            down, up = state.pop(f"{name}.lora_down", None), state.pop(f"{name}.lora_up", None)
            if down is None and up is None:
                continue  # a layer this adapter does not target: zeros
            row_down, row_up = rows[f"{name}.lora_down"], rows[f"{name}.lora_up"]
            up = None if up is None else up.flatten(1)  # conv ups are (out, r, 1, 1)
            fits = (
                down is not None
                and up is not None
                and down.shape[0] <= row_down.shape[0]
                and down.shape[1:] == row_down.shape[1:]
                and up.shape == (row_up.shape[0], down.shape[0])
            )
            if not fits:
                raise AdapterError(f"{name}: adapter weights do not fit (bank rank {self.config.rank})")
            rank = down.shape[0]
            row_down[:rank] = down
            row_up[:, :rank] = up * config.scale
        code = state.pop("style_code", None)
        if code is None or code.shape != rows["style_code"].shape:
            raise AdapterError(f"adapter state needs a style_code of shape {tuple(rows['style_code'].shape)}")
        rows["style_code"].copy_(code)
        if state:
            raise AdapterError(f"adapter targets layers this bank does not serve: {sorted(state)}")
        return rows

    def _weights(self, name: str, slots: Tensor | int) -> tuple[Tensor, Tensor]:
        """The stacked (down, up) of layer `name` at `slots` (one slot or a per-sample index tensor)."""
        return self._stacks[f"{name}.lora_down"][slots], self._stacks[f"{name}.lora_up"][slots]

    def _place(self, user_id: str, rows: dict[str, Tensor]) -> None:
        slot = self._resident.get(user_id)
        if slot is None:
            if not self._free:
                self.evict(next(iter(self._resident)))
            slot = self._free.pop()
        for key, row in rows.items():
            self._stacks[key][slot].copy_(row)
        self._resident[user_id] = slot
        self._resident.move_to_end(user_id)

    def _slots(self, adapter_ids: list[str | None], batch: int) -> list[int]:
        """Slot of every sample, making host-spilled users resident; batch users are never evicted here."""
        if len(adapter_ids) != batch:
            raise ValueError(f"{len(adapter_ids)} adapter ids for a batch of {batch}")
        users = list(dict.fromkeys(u for u in adapter_ids if u is not None))
        if len(users) > self.n_slots:
            raise ValueError(f"batch uses {len(users)} adapters; the bank holds {self.n_slots}")
        for user in sorted(users, key=lambda u: u not in self._resident):  # touch residents before restoring
            if not self.restore(user):
                raise KeyError(f"adapter for user {user!r} is not in the bank; add it first")
        return [0 if u is None else self._resident[u] for u in adapter_ids]

    @contextmanager
    def _routed(self, routes: dict[str, PerSample | Merged]) -> Iterator[None]:
        """Set a route on every served layer for one forward; always cleared afterwards."""
        for name, layer in self.layers.items():
            if self.generator.get_submodule(name) is not layer:
                raise AdapterError(f"layer {name!r} was unwrapped or replaced under the bank")
            if layer.merged_adapter is not None:
                raise AdapterError(f"layer {name!r} has {layer.merged_adapter!r} merged; unmerge it first")
            layer.route = routes[name]
        try:
            yield
        finally:
            for layer in self.layers.values():
                layer.route = None


def _take(value: float | Tensor | None, idx: Tensor, batch: int) -> float | Tensor | None:
    """The rows `idx` of a per-sample argument; scalars and broadcast (size-1) tensors pass through."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value[idx]
    return value

"""The PyTorch core of a serving replica: one base generator, many users' adapters, mixed batches.

Ray Serve (serve/app.py) only moves requests around; everything a replica computes is here, so it
is tested without Ray and the offline CLI gives the same pixels. A request names its user and an
adapter reference (an alias such as `production`, or a version from an A/B variant); the replica
resolves it through the registry with a TTL cache (new versions and rollbacks land within
`alias_ttl_s`), loads the adapter into its AdapterBank on first use (an LRU over device slots, then
host memory), and runs the batch through the bank in one forward whatever users it mixes.

A user without an adapter is rendered zero-shot: the base generator with the style code of their
stored style set (`pstyle.serving.style_sets`), or of style images sent with the request. Codes are
cached per (user, set digest), so only a user's first request after changing their set encodes it.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from pstyle.adapters import AdapterBank, AdapterConfig, AdapterError
from pstyle.adapters.io import META_FILE, TENSORS_FILE, parse_adapter
from pstyle.config import ServeConfig
from pstyle.ids import validate_id
from pstyle.images import open_image, resize_shorter_side, to_tensor
from pstyle.models.generator import DOWNSAMPLING
from pstyle.models.precision import inference_autocast, inference_input, inference_module
from pstyle.models.variants import apply_variant, compiled_synthesize, variant_format
from pstyle.serving.regions import region_masks
from pstyle.serving.stale_cache import StaleCache
from pstyle.serving.style_sets import StyleSet, StyleSets
from pstyle.serving.stylize import fit_to_stride
from pstyle.store import StoreError, open_store
from pstyle.store.registry import PRODUCTION_ALIAS, IntegrityError, Registry, RegistryError
from pstyle.training.checkpoint import fingerprint, load_checkpoint

logger = logging.getLogger("ray.serve")  # replica logs: Serve ships them to its log files

BASE_VERSION = "base"  # what a zero-shot render reports as its adapter version
NO_STYLE = "upload 1-16 style images to PUT /v1/me/styles (or send `style` files with the request)"
STORE_DOWN = "storage is unreachable, retry shortly"


class NoAdapter(LookupError):
    """The user has no adapter under that reference (the API answers 404, see serve/README.md)."""


@dataclass
class StylizeRequest:
    """One image to render; `image` (3, H, W) in [0, 1] with H, W multiples of the generator stride."""

    user_id: str
    image: Tensor
    ref: str = PRODUCTION_ALIAS
    strength: float = 1.0
    seed: int = 0
    region: str = "all"
    mask: Tensor | None = None  # (1, H, W) when region == "mask"
    styles: Tensor | None = None  # (K, 3, S, S) sent with the request: zero-shot, overrides the adapter
    styles_digest: str = ""  # of the sent style files: their code-cache key


@dataclass
class StylizeResult:
    image: Tensor | None  # (3, H, W) in [0, 1]; None when `error` says why
    version: int | str | None = None  # adapter version, or BASE_VERSION for a zero-shot render
    error: str | None = None
    server_fault: bool = False  # the error is a broken stored artifact (ours), not the user's request
    unavailable: bool = False  # the error is the store being unreachable: retrying later will work


def prepare_image(data: bytes, name: str, size: int, config: ServeConfig) -> Tensor:
    """Decode an upload (ImageError on anything unusable), resize its shorter side, fit the stride."""
    if size < 32 or size > config.max_size or size % DOWNSAMPLING:
        raise ValueError(f"size must be a multiple of {DOWNSAMPLING} in [32, {config.max_size}], got {size}")
    image = open_image(data, name, max_pixels=config.max_pixels, single_frame=True, draft_side=size)
    return fit_to_stride(to_tensor(resize_shorter_side(image, size)))


class AdapterServer:
    """Base model + adapter bank + alias cache for one replica. Thread-safe: one forward at a time."""

    def __init__(self, config: ServeConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.registry = Registry(open_store(config.store, interactive=True))
        self._cache_dir = tempfile.TemporaryDirectory(prefix="pstyle-serve-")
        base = self.registry.resolve("base", config.base, config.base_ref)
        directory = self.registry.fetch(base, Path(self._cache_dir.name) / "base")
        model, meta = load_checkpoint(directory, self.device)
        self.fingerprint = fingerprint(model)  # of the checkpoint: an int8 variant folds its norms
        self.model = inference_module(apply_variant(model, directory, meta), self.device)
        self.variant = variant_format(meta)
        # Zero-shot batches (no adapter in them) run the compiled generator, warmed up at the default size.
        self.compiled = (
            compiled_synthesize(copy.deepcopy(self.model.generator), [(1, config.size, config.size)])
            if self.variant == "compiled"
            else None
        )
        self.base_version = base.number
        self.style_sets = StyleSets(self.registry.store)
        self.bank = AdapterBank(
            inference_module(copy.deepcopy(model.generator), self.device),
            capacity_bytes=config.device_cache_bytes,
            device=self.device,
            config=AdapterConfig(),
            host_capacity_bytes=config.host_cache_bytes,
            grouped_max_fraction=config.grouped_max_fraction,
        )
        self._aliases: StaleCache[tuple[str, str], int] = self._cache(config, "aliases")  # -> version
        self._sets: StaleCache[str, StyleSet] = self._cache(config, "style-sets")
        self._codes: OrderedDict[tuple[str, str], Tensor] = OrderedDict()  # (user, set digest) -> code
        self._lock = threading.Lock()
        self.hits = self.misses = self.integrity_errors = 0
        self.code_hits = self.code_misses = 0
        self.cold_load_s: list[float] = []

    def reconfigure(self, config: ServeConfig) -> None:
        """Settings that need no reload (TTL, limits, path rule) apply at once; the alias cache starts
        afresh."""
        self.config = config
        self.bank.set_path_rule(config.grouped_max_fraction)
        self._aliases = self._cache(config, "aliases")
        self._sets = self._cache(config, "style-sets")

    @staticmethod
    def _cache(config: ServeConfig, name: str) -> StaleCache:
        return StaleCache(config.alias_ttl_s, config.stale_if_error_s, config.code_cache_entries, name)

    def resolve(self, user_id: str, ref: str) -> int:
        """The adapter version `ref` names for the user: cached for `alias_ttl_s`, then refreshed in
        the background (`StaleCache`), so a slow or unreachable store never holds up cached users."""

        def load() -> int:
            try:
                return self.registry.resolve("adapter", validate_id(user_id), ref).number
            except RegistryError as exc:
                raise NoAdapter(f"user {user_id!r} has no adapter {ref!r}") from exc

        return self._aliases.get((user_id, ref), load)

    def ensure(self, user_id: str, version: int) -> str:
        """The bank key of this user's adapter version, loading it from the registry on a miss."""
        key = f"{user_id}@{version}"
        if key in self.bank or self.bank.restore(key):
            self.hits += 1
            return key
        self.misses += 1
        t0 = time.perf_counter()
        manifest = self.registry.get("adapter", user_id, version)
        meta, tensors = (self.registry.read(manifest, name) for name in (META_FILE, TENSORS_FILE))
        try:
            adapter = parse_adapter(meta, tensors, self.fingerprint, str(manifest))
        except AdapterError as exc:
            raise NoAdapter(str(exc)) from exc
        self.bank.add(key, adapter.state, adapter.config)
        self.cold_load_s.append(time.perf_counter() - t0)
        return key

    @torch.no_grad()
    def run(self, requests: list[StylizeRequest]) -> list[StylizeResult]:
        """Render a batch of any users; a request that cannot be served gets its error, not the batch's."""
        results: list[StylizeResult | None] = [None] * len(requests)
        planned: list[tuple[int, str | None, Tensor, int | str]] = []  # (index, bank key, code, version)
        with self._lock:
            for i, req in enumerate(requests):
                try:
                    planned.append((i, *self._plan(req)))
                except IntegrityError as exc:  # a corrupt or missing blob: logged, counted, this user only
                    self.integrity_errors += 1
                    logger.error("adapter of %s failed its integrity check: %s", req.user_id, exc)
                    message = f"server-side problem with your adapter, reported to the operators: {exc}"
                    results[i] = StylizeResult(None, error=message, server_fault=True)
                except StoreError as exc:  # a cold load while the store is down: retry later
                    logger.warning("store unreachable for %s: %s", req.user_id, exc)
                    results[i] = StylizeResult(None, error=STORE_DOWN, unavailable=True)
                except (NoAdapter, RegistryError, ValueError) as exc:
                    results[i] = StylizeResult(None, error=str(exc))
            groups: dict[tuple, list[tuple[int, str | None, Tensor, int | str]]] = {}
            for item in planned:  # one forward per image shape and masking mode, users mixed freely
                req = requests[item[0]]
                groups.setdefault((tuple(req.image.shape), req.region != "all"), []).append(item)
            for items in groups.values():
                batch = [requests[i] for i, *_ in items]
                codes = torch.stack([code for _, _, code, _ in items])
                images = self._forward(batch, [key for _, key, _, _ in items], codes)
                for (i, _, _, version), image in zip(items, images, strict=True):
                    results[i] = StylizeResult(image, version)
        return [r for r in results if r is not None]

    def _plan(self, req: StylizeRequest) -> tuple[str | None, Tensor, int | str]:
        """(bank key or None for the bare base, style code, reported version) for one request: the
        request's own style files, else the user's adapter, else their stored style set."""
        if req.styles is not None:
            return None, self._code(req.user_id, req.styles_digest, lambda: req.styles), BASE_VERSION
        try:
            version = self.resolve(req.user_id, req.ref)
        except NoAdapter as exc:
            style_set = self.style_set(req.user_id)
            if style_set is None:
                raise NoAdapter(f"{exc} and no style set: {NO_STYLE}") from None
            load = partial(self.style_sets.load, style_set, self.config.style_size)
            return None, self._code(req.user_id, style_set.digest, load), BASE_VERSION
        key = self.ensure(req.user_id, version)
        return key, self.bank.style_code(key), version

    def style_set(self, user_id: str) -> StyleSet | None:
        """The user's stored style set, cached like their adapter aliases (a new set lands within
        `alias_ttl_s`). Absence is not cached: a user's first upload serves at once."""
        return self._sets.get(user_id, partial(self.style_sets.get, user_id))

    def _code(self, user_id: str, digest: str, styles: Callable[[], Tensor]) -> Tensor:
        """The style code of a user's style images, from the LRU cache or encoded now."""
        cache_key = (user_id, digest)
        if cache_key in self._codes:
            self.code_hits += 1
            self._codes.move_to_end(cache_key)
            return self._codes[cache_key]
        self.code_misses += 1
        with inference_autocast(self.device):
            code = self.model.encoder(inference_input(styles().to(self.device)))[0].float()
        self._codes[cache_key] = code
        while len(self._codes) > self.config.code_cache_entries:
            self._codes.popitem(last=False)
        return code

    def _forward(self, requests: list[StylizeRequest], keys: list[str | None], codes: Tensor) -> Tensor:
        content = inference_input(torch.stack([r.image for r in requests]).to(self.device))
        noise = torch.cat([self.model.generator.make_noise(content[:1], seed=r.seed) for r in requests])
        strength = torch.tensor([r.strength for r in requests], device=self.device).view(-1, 1, 1, 1)
        mask = region_masks([r.region for r in requests], content, [r.mask for r in requests])
        if self.compiled is not None and not any(keys):
            out = self.model.generator.blend(content, self.compiled(content, codes, noise), strength, mask)
            return out.float().clamp(0, 1).cpu()
        with inference_autocast(self.device):
            out = self.bank.forward_auto(content, codes, noise, keys, strength=strength, mask=mask)
        return out.float().clamp(0, 1).cpu()

    def stats(self) -> dict[str, float]:
        total = self.hits + self.misses
        cold = sorted(self.cold_load_s)
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / total if total else 0.0,
            "cold_load_ms_p50": 1e3 * cold[len(cold) // 2] if cold else 0.0,
            "style_code_hits": self.code_hits,
            "style_code_misses": self.code_misses,
            "resident_adapters": len(self.bank.resident),
            "spilled_adapters": len(self.bank.spilled),
            "integrity_errors": self.integrity_errors,
        }

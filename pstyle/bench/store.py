"""`pstyle bench store`: registry publish and load latency for a rank-8 adapter, local and S3.

Publish = two blob uploads, the version claim and an alias move. Load = what a serving replica does
for a pinned version: read the manifest, fetch both files and verify their sha256. Resolve = alias →
version (the alias log replayed), which serving caches with a TTL.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from pstyle.adapters import AdapterConfig, inject_adapter
from pstyle.adapters.io import save_adapter
from pstyle.bench.common import latency_ms, machine_description
from pstyle.config import ModelConfig
from pstyle.models.style_model import StyleModel
from pstyle.store import Store
from pstyle.store.registry import Registry
from pstyle.training.checkpoint import fingerprint

TARGET_LOAD_MS = {"local": 10.0, "s3": 50.0}


def rank8_adapter(directory: Path) -> Path:
    """A rank-8 adapter with non-zero weights on the default generator, saved the product's way."""
    torch.manual_seed(0)
    model = StyleModel(ModelConfig())
    inject_adapter(model.generator, "bench", AdapterConfig(rank=8, alpha=8))
    with torch.no_grad():
        for p in model.generator.parameters():
            if p.requires_grad:
                p.normal_(std=0.02)
    meta = {"user_id": "bench", "version": "bench", "base_fingerprint": fingerprint(model)}
    save_adapter(directory, model.generator, "bench", meta)
    return directory


def _timed(fn: Callable[[], object], trials: int, desc: str) -> list[float]:
    times = []
    for _ in tqdm(range(trials), desc=desc, leave=False):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _bench_backend(backend: str, store: Store, adapter: Path, trials: int) -> dict:
    reg = Registry(store)
    publish = _timed(
        lambda: reg.publish_adapter("bench", adapter, aliases=["production"]), trials, f"{backend} publish"
    )
    numbers = iter(reg.versions("adapter", "bench")[::-1])  # each load a different version: no cache helps

    def load() -> None:
        version = reg.get("adapter", "bench", next(numbers))
        for name in version.files:
            reg.read(version, name)

    loads = _timed(load, trials, f"{backend} load")
    resolves = _timed(lambda: reg.resolve("adapter", "bench", "production"), 20, f"{backend} resolve")
    return {
        "backend": backend,
        "uri": store.uri,
        "publish_ms": latency_ms(publish),
        "load_ms": latency_ms(loads),
        "resolve_alias_ms": latency_ms(resolves),
        "alias_log_entries": len(reg.versions("adapter", "bench")),
        "target_load_ms": TARGET_LOAD_MS.get(backend),
    }


def bench_store(stores: dict[str, Store], trials: int = 50) -> dict:
    """Latency rows per backend; every backend gets the same adapter and the same number of trials."""
    with tempfile.TemporaryDirectory() as tmp:
        adapter = rank8_adapter(Path(tmp) / "adapter")
        adapter_bytes = sum(f.stat().st_size for f in adapter.iterdir())
        rows = [_bench_backend(backend, store, adapter, trials) for backend, store in stores.items()]
    return {
        "benchmark": "store",
        "machine": machine_description(torch.device("cpu")),
        "adapter_bytes": adapter_bytes,
        "trials": trials,
        "rows": rows,
    }


def store_table(result: dict) -> str:
    lines = [f"{'backend':<8}{'publish p50/p99 ms':>20}{'load p50/p99 ms':>18}{'resolve p50 ms':>16}"]
    for r in result["rows"]:
        p, lo, rs = r["publish_ms"], r["load_ms"], r["resolve_alias_ms"]
        lines.append(
            f"{r['backend']:<8}{p['p50']:>10.2f}/{p['p99']:<9.2f}{lo['p50']:>8.2f}/{lo['p99']:<9.2f}{rs['p50']:>10.2f}"
        )
    return "\n".join(lines)

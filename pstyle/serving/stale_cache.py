"""A TTL cache for what requests read from the store (aliases, style sets, experiments, key records)
that keeps requests off the store's latency and alive through its outages.

- Reads of a cached key never wait on the store: a background sweeper, waking every quarter TTL,
  re-reads every entry older than three quarters of it, so a change in the store (a new version, a
  rollback, a revoked key) is seen within `ttl_s` plus the store's own latency, at about one read
  per key per TTL (as often as a plain TTL cache under steady traffic). Entries nobody read for
  `idle_s` (10 TTLs) are dropped instead of re-read: the cost stays with the keys in use.
- A re-read that cannot reach the store (`StoreError`) keeps the entry, which serves for up to
  `max_stale_s` after its last good read (stale-if-error). One that says the thing is gone (any
  other error: a deleted alias, a revoked key) drops it, so the next read fails as the store says.
- A missing key loads on the caller's thread and its errors propagate. A load returning None
  (absence) is not cached, so a first upload serves at once.
- With `ttl_s` 0 every read loads on the caller's thread; only an unreachable store falls back on
  the last value (for `max_stale_s`).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from pstyle.store import StoreError

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class _Entry(Generic[V]):
    value: V
    load: Callable[[], V | None]
    loaded: float  # monotonic time of the last successful load
    checked: float  # ... of the last load attempt (failed or not)
    used: float  # ... of the last read


class StaleCache(Generic[K, V]):
    """`get(key, load)` as the module says; thread-safe."""

    def __init__(
        self,
        ttl_s: float,
        max_stale_s: float,
        max_entries: int = 100_000,
        name: str = "cache",
        idle_s: float | None = None,
    ) -> None:
        self.ttl_s, self.max_stale_s, self.max_entries, self.name = ttl_s, max_stale_s, max_entries, name
        self.idle_s = 10 * ttl_s if idle_s is None else idle_s
        self._entries: dict[K, _Entry[V]] = {}
        self._reloading: set[K] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"{name}-reload")
        self.stale_served = 0  # reads answered while the store could not confirm the value
        if ttl_s > 0:
            ref = weakref.ref(self)
            threading.Thread(target=_sweep_while_alive, args=(ref, ttl_s / 4), daemon=True,
                             name=f"{name}-sweep").start()  # fmt: skip

    def get(self, key: K, load: Callable[[], V | None]) -> V | None:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.used = now
        if entry is not None and self.ttl_s > 0 and now - entry.loaded < max(self.ttl_s, self.max_stale_s):
            if entry.checked > entry.loaded:  # the last re-read failed: the store is unreachable
                self.stale_served += 1
            return entry.value
        try:
            return self._load(key, load)
        except StoreError:
            if entry is None or now - entry.loaded >= self.max_stale_s:
                raise
            log.warning("%s: store unreachable, serving %r as last loaded", self.name, key)
            self.stale_served += 1
            return entry.value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def sweep(self) -> None:
        """Drop idle entries; re-read, in the background, those older than 3/4 of the TTL."""
        now = time.monotonic()
        with self._lock:
            for key in [k for k, e in self._entries.items() if now - e.used > self.idle_s]:
                del self._entries[key]
            due = [(k, e.load) for k, e in self._entries.items()
                   if now - e.checked >= 0.75 * self.ttl_s and k not in self._reloading]  # fmt: skip
            self._reloading.update(k for k, _ in due)
        for key, load in due:
            self._pool.submit(self._reload, key, load)

    def _load(self, key: K, load: Callable[[], V | None]) -> V | None:
        """Load: store the value, drop the entry when the thing is gone, or (store unreachable) note
        the failed attempt and re-raise."""
        try:
            value = load()
        except StoreError:
            with self._lock:
                if (entry := self._entries.get(key)) is not None:
                    entry.checked = time.monotonic()
            raise
        except Exception:
            with self._lock:
                self._entries.pop(key, None)
            raise
        with self._lock:
            if value is None:
                self._entries.pop(key, None)
                return None
            if key not in self._entries and len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))  # the oldest inserted
            now = time.monotonic()
            used = self._entries[key].used if key in self._entries else now
            self._entries[key] = _Entry(value, load, now, now, used)
        return value

    def _reload(self, key: K, load: Callable[[], V | None]) -> None:
        try:
            self._load(key, load)
        except StoreError:
            log.warning("%s: store unreachable, keeping %r as last loaded", self.name, key)
        except Exception:  # gone, or broken: dropped by _load; the next read reports why
            log.info("%s: %r no longer loads; dropped", self.name, key, exc_info=True)
        finally:
            with self._lock:
                self._reloading.discard(key)


def _sweep_while_alive(ref: weakref.ref[StaleCache], interval_s: float) -> None:
    """The sweeper holds its cache weakly, so a cache replaced by a reconfigure stops its thread."""
    while (cache := ref()) is not None:
        cache.sweep()
        del cache
        time.sleep(interval_s)

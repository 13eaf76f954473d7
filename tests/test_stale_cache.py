"""StaleCache: what requests read from the store, kept off its latency and alive through its outages."""

from __future__ import annotations

import time

import pytest

from pstyle.serving.stale_cache import StaleCache
from pstyle.store import KeyNotFound, StoreError


class Source:
    """A store stand-in: a value, an optional delay, and a failure mode."""

    def __init__(self) -> None:
        self.value, self.delay_s, self.error, self.loads = 1, 0.0, None, 0

    def load(self) -> int | None:
        self.loads += 1
        time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return self.value


def read_for(cache: StaleCache, source: Source, seconds: float) -> tuple[list[int], float]:
    """Read every 10 ms for `seconds`: (values seen, slowest read in s)."""
    values, slowest, end = [], 0.0, time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        values.append(cache.get("k", source.load))
        slowest = max(slowest, time.perf_counter() - t0)
        time.sleep(0.01)
    return values, slowest


def test_a_change_lands_within_the_ttl_while_no_read_waits_on_a_slow_store() -> None:
    cache, source = StaleCache(ttl_s=0.2, max_stale_s=60), Source()
    assert cache.get("k", source.load) == 1
    source.value, source.delay_s = 2, 0.3  # the store changed, and every read of it takes 0.3 s
    values, slowest = read_for(cache, source, 1.0)
    assert slowest < 0.1  # the re-reads ran in the background
    assert values[0] == 1 and values[-1] == 2
    assert values.index(2) * 0.01 < 0.2 + 0.3 + 0.2  # seen within the TTL + the slow read (+ slack)


def test_gone_drops_the_entry_so_the_next_read_fails() -> None:
    """A revoked key or deleted alias: the store says it is gone, and no stale copy outlives that."""
    cache, source = StaleCache(ttl_s=0.1, max_stale_s=60), Source()
    cache.get("k", source.load)
    source.error = KeyNotFound("k")
    time.sleep(0.2)  # a sweep re-read it meanwhile
    with pytest.raises(KeyNotFound):
        cache.get("k", source.load)


def test_store_unreachable_serves_the_last_value_at_once_until_max_stale() -> None:
    cache, source = StaleCache(ttl_s=0.1, max_stale_s=0.6), Source()
    cache.get("k", source.load)
    source.error, source.delay_s = StoreError("S3 is down"), 0.2
    values, slowest = read_for(cache, source, 0.4)
    assert set(values) == {1} and slowest < 0.1 and cache.stale_served > 0
    time.sleep(0.3)
    with pytest.raises(StoreError):  # past max_stale_s: the outage reaches the caller
        cache.get("k", source.load)
    with pytest.raises(StoreError):
        cache.get("other", source.load)  # nothing to fall back on


def test_without_a_ttl_every_read_loads_and_only_an_outage_falls_back() -> None:
    cache, source = StaleCache(ttl_s=0, max_stale_s=0.3), Source()
    assert cache.get("k", source.load) == 1 and cache.get("k", source.load) == 1 and source.loads == 2
    source.error = StoreError("S3 is down")
    assert cache.get("k", source.load) == 1 and cache.stale_served == 1
    time.sleep(0.35)
    with pytest.raises(StoreError):
        cache.get("k", source.load)
    source.error = KeyNotFound("k")
    with pytest.raises(KeyNotFound):
        cache.get("k", source.load)


def test_absence_is_not_cached_idle_entries_go_and_entries_are_bounded() -> None:
    cache, source = StaleCache(ttl_s=0.1, max_stale_s=60, max_entries=2, idle_s=0.3), Source()
    source.value = None
    assert cache.get("k", source.load) is None
    source.value = 5
    assert cache.get("k", source.load) == 5  # the first upload serves at once
    for key in ("a", "b", "c"):
        cache.get(key, source.load)
    assert len(cache._entries) == 2
    time.sleep(0.6)  # nobody reads: dropped, not re-read forever
    assert cache._entries == {}

"""An append-only event log (feedback ratings, A/B exposures) in the artifact store.

Events are buffered and written as batches: one JSONL object per (kind, day) per flush, under
Hive-style dated prefixes, `events/<kind>/date=YYYY-MM-DD/<time>-<random>.jsonl`. Objects are never
rewritten, so concurrent writers (many Serve replicas) need no coordination, and a reader streaming
a time range lists only the days it covers. `close()` (also run at interpreter exit) flushes, so a
clean shutdown loses nothing.

With a background flusher (a server), `append` never writes: it only wakes the flusher, so a slow or
unreachable store never holds up the request that recorded an event. A failed flush keeps every
event buffered and the next one retries, so an outage delays events without losing them. A process
killed outright would lose what it had buffered (at most `flush_interval_s` of events); with a
`spool` folder (`pstyle.store.event_spool`) those events are also on the node's disk, and the next
EventLog on that folder writes them.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pstyle.ids import validate_id
from pstyle.store import Store
from pstyle.store.event_spool import EventSpool

logger = logging.getLogger(__name__)
PREFIX = "events"
DAY = dt.timedelta(days=1)


def _day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


class EventLog:
    """Buffer events in memory and write them in batches of `batch_size` or every `flush_interval_s`."""

    def __init__(
        self,
        store: Store,
        batch_size: int = 256,
        flush_interval_s: float = 5.0,
        background: bool = False,
        spool: Path | None = None,
    ) -> None:
        """`background` adds a thread that flushes every `flush_interval_s` even when no new event
        arrives (a server's quiet periods); without it, flushes happen on append and close.
        `spool`: a folder on this node for the write-ahead copy; what dead processes left there is
        picked up now and written with the first flush."""
        self.store = store
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self._spool = EventSpool(spool) if spool is not None else None
        self._buffer: list[dict[str, Any]] = self._spool.claim_orphans() if self._spool else []
        self.recovered = len(self._buffer)  # events a dead process had buffered, taken over here
        self._oldest = time.time() - flush_interval_s if self._buffer else 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._due = threading.Event()  # wakes the background flusher early (a full batch)
        self.background = background
        if background:
            threading.Thread(target=self._flush_periodically, daemon=True, name="event-flush").start()
        atexit.register(self.close)

    @property
    def pending(self) -> int:
        """Events buffered, not yet in the store."""
        with self._lock:
            return len(self._buffer)

    def _flush_periodically(self) -> None:
        while not self._stop.is_set():
            self._due.wait(self.flush_interval_s)
            self._due.clear()
            try:
                self.flush()
            except Exception as exc:  # the events stay buffered; the next tick or close() retries
                logger.warning("event flush failed (%s); %d events stay buffered", exc, self.pending)

    def append(self, kind: str, user_id: str, **fields: Any) -> dict[str, Any]:
        """Record one event; returns it with its id and timestamp. Flushes when the batch is due."""
        event = {
            "kind": validate_id(kind, "event kind"),
            "user_id": validate_id(user_id),
            "ts": time.time(),
            "id": uuid.uuid4().hex,
            **fields,
        }
        with self._lock:
            if self._spool is not None:
                self._spool.append(event)
            if not self._buffer:
                self._oldest = event["ts"]
            self._buffer.append(event)
            due = len(self._buffer) >= self.batch_size or event["ts"] - self._oldest >= self.flush_interval_s
        if due and self.background:
            self._due.set()
        elif due:
            self.flush()
        return event

    def flush(self) -> int:
        """Write everything buffered; returns how many events were written. On a store error the
        events go back to the buffer, so a later flush retries them."""
        with self._lock:
            batch, self._buffer = self._buffer, []
            segments = self._spool.rotate() if self._spool is not None else []
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for event in batch:
            groups.setdefault((event["kind"], _day(event["ts"])), []).append(event)
        written = 0
        try:
            for (kind, day), events in groups.items():
                stamp = dt.datetime.fromtimestamp(events[0]["ts"], dt.UTC).strftime("%H%M%S%f")
                key = f"{PREFIX}/{kind}/date={day}/{stamp}-{uuid.uuid4().hex[:12]}.jsonl"
                self.store.put_bytes(key, "".join(json.dumps(e) + "\n" for e in events).encode())
                written += len(events)
        except BaseException:
            with self._lock:
                unwritten = [e for events in groups.values() for e in events]
                self._buffer = unwritten[written:] + self._buffer
                if self._spool is not None:
                    self._spool.unwritten(segments)
            raise
        if self._spool is not None:
            self._spool.written(segments)
        return written

    def close(self) -> None:
        self._stop.set()
        self._due.set()
        if self._buffer:
            self.flush()
        atexit.unregister(self.close)

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(
    store: Store,
    kind: str,
    user_id: str | None = None,
    start: float | None = None,
    end: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream `kind` events in time order, optionally for one user and within [start, end)."""
    prefix = f"{PREFIX}/{validate_id(kind, 'event kind')}/"
    if user_id is not None:
        validate_id(user_id)
    days = None
    if start is not None and end is not None:
        first = dt.datetime.fromtimestamp(start, dt.UTC).date()
        days = {
            str(first + i * DAY)
            for i in range((dt.datetime.fromtimestamp(end, dt.UTC).date() - first).days + 1)
        }
    keys = [k for k in store.list(prefix) if days is None or k[len(prefix) :].split("/")[0][5:] in days]
    events, seen = [], set()
    for key in keys:
        for line in store.get_bytes(key).decode().splitlines():
            event = json.loads(line)
            event_id = event.get("id")
            if event_id is not None:  # an id seen before: written twice, replayed from a spool
                if event_id in seen:
                    continue
                seen.add(event_id)
            if user_id is not None and event["user_id"] != user_id:
                continue
            if (start is not None and event["ts"] < start) or (end is not None and event["ts"] >= end):
                continue
            events.append(event)
    yield from sorted(events, key=lambda e: e["ts"])

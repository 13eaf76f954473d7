"""The event log on both backends: batching, dated prefixes, streaming by user and time."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from pstyle.store import Store
from pstyle.store.events import EventLog, read_events


def test_batches_land_under_dated_prefixes(store: Store) -> None:
    log = EventLog(store, batch_size=3, flush_interval_s=3600)
    for i in range(7):
        log.append("feedback", "alice" if i % 2 else "bob", image_id=f"img{i}", rating=1 + i % 5)
    keys = list(store.list("events/feedback/"))
    assert len(keys) == 2  # two full batches of 3; the 7th event is still buffered
    assert all(k.split("/")[2].startswith("date=20") and k.endswith(".jsonl") for k in keys)
    log.close()
    events = list(read_events(store, "feedback"))
    assert [e["image_id"] for e in events] == [f"img{i}" for i in range(7)]
    assert [e["rating"] for e in read_events(store, "feedback", user_id="alice")] == [2, 4, 1]


def test_time_range_and_kind_filters(store: Store) -> None:
    with EventLog(store) as log:
        first = log.append("exposure", "alice", experiment="exp1", variant="a")
        second = log.append("exposure", "alice", experiment="exp1", variant="b")
        log.append("feedback", "alice", rating=5)
    assert [e["id"] for e in read_events(store, "exposure", start=second["ts"], end=second["ts"] + 1)] == [
        second["id"]
    ]
    assert [e["id"] for e in read_events(store, "exposure", end=second["ts"])] == [first["id"]]
    assert len(list(read_events(store, "feedback"))) == 1
    assert list(read_events(store, "exposure", user_id="bob")) == []


def test_hostile_kinds_and_users_rejected(store: Store) -> None:
    log = EventLog(store)
    with pytest.raises(ValueError, match="invalid user id"):
        log.append("feedback", "../bob", rating=1)
    with pytest.raises(ValueError, match="invalid event kind"):
        log.append("a/b", "alice")
    log.close()
    assert list(store.list("events/")) == []


def test_clean_exit_flushes_buffered_events(store_uri: str, store: Store) -> None:
    script = (
        "import sys\nfrom pstyle.store.events import EventLog\nfrom pstyle.store import open_store\n"
        "log = EventLog(open_store(sys.argv[1]), batch_size=1000, flush_interval_s=3600)\n"
        "for i in range(5): log.append('feedback', 'alice', rating=5)\n"
    )
    subprocess.run([sys.executable, "-c", script, store_uri], check=True)
    assert len(list(read_events(store, "feedback", user_id="alice"))) == 5


def test_background_flush_without_new_events(store: Store) -> None:
    log = EventLog(store, batch_size=1000, flush_interval_s=0.2, background=True)
    log.append("feedback", "alice", rating=3)
    deadline = time.monotonic() + 10
    while not list(read_events(store, "feedback")):
        assert time.monotonic() < deadline, "the background thread never flushed"
        time.sleep(0.05)
    log.close()


def test_background_log_never_writes_on_the_callers_thread_and_an_outage_loses_nothing(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server's log: appends only buffer (a full batch wakes the flusher); while the store fails,
    every event stays buffered, and all of them land once it is back."""
    from pstyle.store import LocalStore, StoreError

    store = LocalStore(tmp_path / "store")
    real_put, writers, down = store.put_bytes, set(), [True]

    def put(key: str, data: bytes, if_absent: bool = False) -> None:
        writers.add(threading.current_thread().name)
        if down[0]:
            raise StoreError("S3 is down")
        real_put(key, data, if_absent)

    monkeypatch.setattr(store, "put_bytes", put)
    log = EventLog(store, batch_size=5, flush_interval_s=0.1, background=True)
    for i in range(23):
        log.append("feedback", "alice", image_id=f"img{i}", rating=3)
    time.sleep(0.5)  # several failed flushes
    assert log.pending == 23 and writers == {"event-flush"}
    down[0] = False
    deadline = time.monotonic() + 10
    while log.pending:
        assert time.monotonic() < deadline, "buffered events never landed"
        time.sleep(0.05)
    assert sorted(e["image_id"] for e in read_events(store, "feedback")) == sorted(
        f"img{i}" for i in range(23)
    )
    log.close()


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from pstyle.store import LocalStore
from pstyle.store.events import EventLog
log = EventLog(LocalStore(sys.argv[1]), batch_size=4, flush_interval_s=3600, spool=Path(sys.argv[2]))
for i in range(10):  # two batches of 4 reach the store; 2 events stay buffered
    log.append("feedback", "alice", image_id=f"img{i}", rating=4)
with open(next(Path(sys.argv[2]).glob(f"{os.getpid()}-*.jsonl")), "a") as segment:
    segment.write('{"kind": "feedback", "torn')  # killed in the middle of a line
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writers_buffered_events_land_through_the_spool(tmp_path) -> None:
    """A process killed between flushes: its 2 buffered events are on the node's disk, and the next
    EventLog on that spool writes them; a torn line is skipped; nothing lands twice."""
    from pstyle.store import LocalStore

    store, spool = LocalStore(tmp_path / "store"), tmp_path / "spool"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(store.root), str(spool)], check=False)
    assert proc.returncode == -9
    assert len(list(read_events(store, "feedback"))) == 8
    with EventLog(store, spool=spool) as log:
        assert log.recovered == 2
    assert sorted(e["image_id"] for e in read_events(store, "feedback")) == sorted(
        f"img{i}" for i in range(10)
    )
    assert list(spool.iterdir()) == []  # written, so deleted


def test_events_written_twice_are_read_once(tmp_path) -> None:
    """Killed after a store write but before deleting its segment: the replay repeats those events
    under the same ids, and readers see each once."""
    from pstyle.store import LocalStore

    store = LocalStore(tmp_path / "store")
    with EventLog(store) as log:
        event = log.append("feedback", "alice", image_id="img0", rating=5)
    with EventLog(store) as log:
        log._buffer.append(event)  # what a replayed segment puts back
    assert len(list(store.list("events/feedback/"))) == 2
    assert [e["id"] for e in read_events(store, "feedback")] == [event["id"]]

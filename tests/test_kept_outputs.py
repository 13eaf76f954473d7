"""Returned images kept after the response: a failing store costs only the copy, counted, and a
long outage cannot queue without bound."""

from __future__ import annotations

import threading
import time

from pstyle.serving.kept_outputs import KeptOutputs
from pstyle.store import LocalStore, StoreError


def wait_until_idle(outputs: KeptOutputs) -> None:
    deadline = time.monotonic() + 10
    while outputs.pending:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_kept_when_the_store_works_counted_when_it_fails(tmp_path, monkeypatch) -> None:
    store = LocalStore(tmp_path / "store")
    outputs = KeptOutputs(store)
    outputs.keep("outputs/alice/a.png", b"png")
    wait_until_idle(outputs)
    assert store.get_bytes("outputs/alice/a.png") == b"png" and outputs.kept == 1

    def down(key: str, data: bytes, if_absent: bool = False) -> None:
        raise StoreError("S3 is down")

    monkeypatch.setattr(store, "put_bytes", down)
    outputs.keep("outputs/alice/b.png", b"png")
    wait_until_idle(outputs)
    assert (outputs.kept, outputs.not_kept) == (1, 1)


def test_pending_writes_are_bounded(tmp_path, monkeypatch) -> None:
    store, release = LocalStore(tmp_path / "store"), threading.Event()
    real_put = store.put_bytes
    monkeypatch.setattr(
        store, "put_bytes", lambda key, data, if_absent=False: (release.wait(), real_put(key, data))
    )
    outputs = KeptOutputs(store, max_pending=3)
    for i in range(5):
        outputs.keep(f"outputs/alice/{i}.png", b"png")  # a slow store: the writer is stuck on the first
    assert outputs.pending == 3 and outputs.not_kept == 2
    release.set()
    wait_until_idle(outputs)
    assert outputs.kept == 3 and len(list(store.list("outputs/"))) == 3

"""Returned images kept in the store (`keep_outputs`), so a later rating can train on the image rated.

The write happens after the response, on one background thread: a slow store does not delay the
response, and an unreachable one costs only the kept copy (logged and counted; the rating still
lands, and the adapter job skips a rated image it cannot find). Pending writes are bounded, so an
outage cannot grow memory without limit.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from pstyle.store import Store

log = logging.getLogger(__name__)


class KeptOutputs:
    def __init__(self, store: Store, max_pending: int = 256) -> None:
        self.store, self.max_pending = store, max_pending
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="kept-outputs")
        self._lock = threading.Lock()
        self.pending = self.kept = self.not_kept = 0

    def keep(self, key: str, data: bytes) -> None:
        """Queue one write; beyond `max_pending` queued writes the image is not kept."""
        with self._lock:
            if self.pending >= self.max_pending:
                self.not_kept += 1
                return
            self.pending += 1
        self._pool.submit(self._write, key, data)

    def _write(self, key: str, data: bytes) -> None:
        try:
            self.store.put_bytes(key, data)
            outcome = "kept"
        except Exception as exc:
            log.warning("could not keep output %s: %s", key, exc)
            outcome = "not_kept"
        with self._lock:
            self.pending -= 1
            setattr(self, outcome, getattr(self, outcome) + 1)

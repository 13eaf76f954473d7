"""A thread pool for bulk work that must not take the CPU from latency-sensitive requests.

Large uploads are parsed and decoded here. On Linux its threads run under SCHED_IDLE: when the
cores are busy the kernel runs every other thread first (the event loop, the generator, Serve's
proxy), and the large decodes use the time that is left, instead of everything slowing down alike.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor


def _run_when_idle() -> None:
    """Put this thread in the idle scheduling class (allowed without privileges; Linux schedules
    threads by their own ids). Elsewhere the pool still bounds how many run at once."""
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))


def background_pool(workers: int, name: str) -> ThreadPoolExecutor:
    """At most `workers` jobs run at once, each in the idle class; the rest wait in the queue."""
    return ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=_run_when_idle)

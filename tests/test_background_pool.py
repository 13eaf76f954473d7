"""The large-upload pool runs its work in the idle scheduling class, at most `workers` at a time."""

from __future__ import annotations

import os
import threading
import time

from pstyle.serving.background import background_pool


def test_pool_threads_run_in_the_idle_class_and_the_caller_does_not() -> None:
    pool = background_pool(1, "test")
    try:
        policy = pool.submit(lambda: os.sched_getscheduler(threading.get_native_id())).result()
    finally:
        pool.shutdown()
    assert policy == os.SCHED_IDLE
    assert os.sched_getscheduler(threading.get_native_id()) != os.SCHED_IDLE


def test_at_most_workers_jobs_run_at_once() -> None:
    running, peak, lock = 0, 0, threading.Lock()

    def job() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1

    pool = background_pool(2, "test")
    for future in [pool.submit(job) for _ in range(8)]:
        future.result()
    pool.shutdown()
    assert peak == 2

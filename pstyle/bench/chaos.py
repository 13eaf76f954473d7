"""`pstyle bench chaos` (`python -m pstyle.bench.chaos`): store faults under a bounded loopback load.

The app is the real one (`serve.app`, local Ray, Serve over loopback HTTP) on a real S3 API
(moto_server), reached through a `FaultProxy` that takes the endpoint away or slows it down. Each
scenario reports the clients' status counts, p99 latency, the time to recover and what was lost:

  S3 down      warm users (adapter, key record and experiments cached) keep stylizing and rating;
               a cold user gets 503 + Retry-After; recovery is the time from the endpoint's return
               to the cold user's first 200; lost counts acknowledged ratings missing from the
               store once the ingress has flushed (it must be 0).
  S3 slow      every chunk sent to S3 is held `delay_s`: warm users' p99 against a baseline phase
               of the same load with no delay (target: at most 2x).
  ingress      the only Ingress replica killed outright: statuses until the replacement answers,
               and acknowledged ratings missing from the store (those of the last `event_flush_s`
               were only in its buffer and its spool: the replacement must replay them). Run twice:
               behind Serve's Python proxy, and behind its HAProxy ingress (`HAPROXY_INGRESS_ENV`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import requests
import torch

from pstyle.bench.common import machine_description, write_result
from pstyle.bench.fault_proxy import FaultProxy
from pstyle.bench.loopback_s3 import environment, loopback_s3_env
from pstyle.bench.serve_http import APP, deploy, loopback_serve, noise_jpeg, populate
from pstyle.config import ServeConfig
from pstyle.distributed.runtime import HAPROXY_INGRESS_ENV
from pstyle.store import Store
from pstyle.store.events import read_events
from pstyle.store.s3 import S3Store

SLOW_TARGET = 2.0  # warm users' p99 with a slow store, over their p99 without
EVENT_FLUSH_S = 0.5  # the app's event_flush_s: what a killed ingress can lose is bounded by it


@dataclass
class Target:
    """A served app whose store can fail: its URL, API keys, the proxy, and the store reached
    directly (to count what landed)."""

    url: str
    keys: dict[str, str]
    proxy: FaultProxy
    store: Store
    image: bytes


UNTIMED_503 = -503  # a 503 that does not say when to retry
FRONT_500 = -500  # a 500 that Serve never wrote: the proxy in front answered for a call it lost


@dataclass
class Call:
    user: str
    status: int  # 0: no HTTP answer (connection error or timeout); else an HTTP status or one above
    seconds: float
    at: float  # monotonic time it finished

    @property
    def started(self) -> float:
        return self.at - self.seconds


def _status(response: requests.Response) -> int:
    """The HTTP status, with two kinds counted apart. Serve stamps `x-request-id` on every answer it
    writes, the app's own 500s included; HAProxy's error page (a 502/503/504 it normalizes to 500)
    has none."""
    if response.status_code == 503 and "Retry-After" not in response.headers:
        return UNTIMED_503
    if response.status_code == 500 and "x-request-id" not in response.headers:
        return FRONT_500
    return response.status_code


def stylize(session: requests.Session, target: Target, user: str) -> tuple[Call, str | None]:
    """One stylize call; (the call, its image id when it succeeded)."""
    t0 = time.monotonic()
    try:
        r = session.post(
            f"{target.url}/v1/stylize",
            files={"image": ("photo.jpg", target.image)},
            headers={"Authorization": f"Bearer {target.keys[user]}"},
            timeout=60,
        )
        status, image_id = _status(r), r.headers.get("X-Image-Id")
    except requests.RequestException:
        status, image_id = 0, None
    now = time.monotonic()
    return Call(user, status, now - t0, now), image_id if status == 200 else None


def rate(session: requests.Session, target: Target, user: str, image_id: str) -> Call:
    t0 = time.monotonic()
    try:
        status = _status(session.post(
            f"{target.url}/v1/feedback",
            json={"image_id": image_id, "rating": 4},
            headers={"Authorization": f"Bearer {target.keys[user]}"},
            timeout=60,
        ))  # fmt: skip
    except requests.RequestException:
        status = 0
    now = time.monotonic()
    return Call(user, status, now - t0, now)


class Load:
    """Warm users stylizing and rating in a loop, one thread each, until stopped; every call kept."""

    def __init__(self, target: Target, users: list[str], rate_outputs: bool = True) -> None:
        self.target, self.rate_outputs = target, rate_outputs
        self.calls: list[Call] = []
        self.acknowledged_at: list[tuple[str, float]] = []  # (image id, when) of ratings the API accepted
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(u,), daemon=True) for u in users]

    @property
    def acknowledged(self) -> list[str]:
        return [image_id for image_id, _ in self.acknowledged_at]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self, user: str) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            call, image_id = stylize(session, self.target, user)
            calls = [call]
            if image_id is not None and self.rate_outputs:
                calls.append(feedback := rate(session, self.target, user, image_id))
                if feedback.status == 200:
                    with self._lock:
                        self.acknowledged_at.append((image_id, feedback.at))
            with self._lock:
                self.calls.extend(calls)


def missing_ratings(store: Store, image_ids: list[str], timeout_s: float) -> set[str]:
    """The acknowledged ratings (by image id) not in the store once the ingress had `timeout_s` to
    flush them."""
    missing, deadline = set(image_ids), time.monotonic() + timeout_s
    while missing:
        missing -= {e["image_id"] for e in read_events(store, "feedback")}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return missing


def p99_ms(calls: list[Call]) -> float:
    times = sorted(c.seconds for c in calls)
    return 1e3 * times[min(len(times) - 1, int(0.99 * len(times)))] if times else float("nan")


def s3_outage(
    target: Target, warm: list[str], cold: str, down_s: float, lead_s: float = 2.0, timeout_s: float = 60.0
) -> dict[str, Any]:
    """The endpoint gone for `down_s` under load; see the module docstring."""
    session = requests.Session()
    cold_calls: list[Call] = []
    with Load(target, warm) as load:
        time.sleep(lead_s)
        target.proxy.down()
        went_down = time.monotonic()
        while time.monotonic() - went_down < down_s:
            cold_calls.append(stylize(session, target, cold)[0])
            time.sleep(0.5)
        target.proxy.up()
        came_back = time.monotonic()
        recovered = None
        while recovered is None and time.monotonic() - came_back < timeout_s:
            call = stylize(session, target, cold)[0]
            cold_calls.append(call)
            if call.status == 200:
                recovered = call.at - came_back
            else:
                time.sleep(0.2)
    during = [c for c in load.calls if went_down <= c.at <= came_back]
    missing = missing_ratings(target.store, load.acknowledged, timeout_s)
    return {
        "fault": f"S3 down {down_s:g} s",
        "statuses": dict(Counter(c.status for c in load.calls)),
        "statuses_during": dict(Counter(c.status for c in during)),
        "cold_statuses": dict(Counter(c.status for c in cold_calls)),
        "p99_ms": p99_ms([c for c in load.calls if c.status == 200]),
        "recovery_s": recovered,
        "ratings_acknowledged": len(load.acknowledged),
        "lost": len(missing),
    }


def s3_slow(target: Target, warm: list[str], delay_s: float, phase_s: float) -> dict[str, Any]:
    """Warm users' latency with the endpoint healthy, then with every chunk sent to it held `delay_s`."""
    phases = {}
    for name, delay in (("baseline", 0.0), ("slow", delay_s)):
        target.proxy.delay_s = delay
        with Load(target, warm) as load:
            time.sleep(phase_s)
        phases[name] = load.calls
    target.proxy.delay_s = 0.0
    ok = {name: [c for c in calls if c.status == 200] for name, calls in phases.items()}
    base, slow = p99_ms(ok["baseline"]), p99_ms(ok["slow"])
    return {
        "fault": f"S3 slow (+{delay_s:g} s per request)",
        "statuses": dict(Counter(c.status for c in phases["slow"])),
        "p99_ms": slow,
        "baseline_p99_ms": base,
        "p99_ratio": slow / base,
        "target_met": slow / base <= SLOW_TARGET,
        "max_ms": 1e3 * max((c.seconds for c in ok["slow"]), default=float("nan")),
        "recovery_s": 0.0,
        "lost": 0,
    }


def kill_ingress(app: str = APP, timeout_s: float = 60.0) -> None:
    """Kill the app's (one) Ingress replica outright, as a crashed process: `ray.kill` ends its worker
    process with no shutdown hook run, so nothing it buffered is flushed. `ray.kill` only asks, and
    Ray calls the actor dead before its process has exited (which then still answers HTTP): this
    returns once the process is gone. Local Ray on Linux only, like the rest of this benchmark."""
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"SERVE_REPLICA::{app}#Ingress")]  # fmt: skip
    if len(names) != 1:
        raise RuntimeError(f"expected one Ingress replica, found {names}")
    replica = ray.get_actor(names[0], namespace="serve")
    pid = ray.get(replica.__ray_call__.remote(lambda _: os.getpid()))
    ray.kill(replica, no_restart=True)
    deadline = time.monotonic() + timeout_s
    while not _exited(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{names[0]} (pid {pid}) still running {timeout_s:g} s after ray.kill")
        time.sleep(0.02)


def _exited(pid: int) -> bool:
    """Whether process `pid` has exited: gone from /proc, or a zombie its parent has not reaped yet
    (its sockets are closed either way)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def ingress_killed(target: Target, warm: list[str], flush_s: float, lead_s: float = 3.0,
                   timeout_s: float = 60.0, front: str = "Serve's proxy") -> dict[str, Any]:  # fmt: skip
    """Kill the only Ingress replica under load: what clients saw from the kill until a replacement
    answered, and how many acknowledged ratings never reached the store (at risk: those of the last
    `flush_s` before it died). Recovery counts from its death, not from the request to kill it."""
    with Load(target, warm) as load:
        time.sleep(lead_s)
        asked = time.monotonic()
        kill_ingress()
        killed = time.monotonic()
        recovered = None
        while recovered is None and time.monotonic() - killed < timeout_s:
            time.sleep(0.2)
            with load._lock:
                after = [c for c in load.calls if c.status == 200 and c.started > killed]
            if after:
                recovered = min(c.at for c in after) - killed
        time.sleep(1.0)
    after_kill = [c for c in load.calls if c.at > asked]
    settled = [c for c in after_kill if recovered is not None and c.started > killed + recovered]
    acked_before = [i for i, at in load.acknowledged_at if at <= killed]
    at_risk = [i for i, at in load.acknowledged_at if asked - flush_s <= at <= killed]
    missing = missing_ratings(target.store, load.acknowledged, 2 * flush_s + 5)
    return {
        "fault": f"Ingress replica killed ({front})",
        "statuses": dict(Counter(c.status for c in after_kill)),
        "failed_after_recovery": sum(c.status != 200 for c in settled),
        "p99_ms": p99_ms([c for c in load.calls if c.status == 200]),
        "recovery_s": recovered,
        "ratings_acknowledged_before_kill": len(acked_before),
        "ratings_at_risk": len(at_risk),
        "lost": len(missing),
    }


@contextmanager
def chaos_app(s3_url: str, bucket: str, workdir: Path, users: int = 4, haproxy: bool = False,
              **changes: Any) -> Iterator[Target]:  # fmt: skip
    """The app on a private local Ray, its store `s3://bucket/chaos` reached through a FaultProxy in
    front of `s3_url`; users user0000.. each have an adapter, and only those a scenario warms up
    are cached by the replica. `haproxy`: Serve's HAProxy ingress instead of its Python proxy.

    The Ray processes reach S3 through the proxy (AWS_ENDPOINT_URL while Ray starts)."""
    store = S3Store(bucket, "chaos", endpoint_url=s3_url)
    keys = populate(store, users, workdir)
    proxy = FaultProxy(_host_port(s3_url))
    config = ServeConfig(
        store=f"s3://{bucket}/chaos", alias_ttl_s=1.0, auth_ttl_s=1.0, event_flush_s=EVENT_FLUSH_S, size=64,
        **changes,
    )  # fmt: skip
    try:
        # HAProxy's manager actor can take over Serve's 5 s readiness limit to start on a busy 2-core
        # machine; Serve then kills it and the start fails. A replica behind HAProxy drains 30 s at
        # shutdown so load balancers in front notice; on loopback there are none.
        front = {
            **HAPROXY_INGRESS_ENV,
            "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
        } if haproxy else {}  # fmt: skip
        with environment({"AWS_ENDPOINT_URL": proxy.url, **front}), loopback_serve() as (_, _, url):
            deploy(config, concurrency=8)
            yield Target(url, keys, proxy, store, noise_jpeg(96, seed=0))
    finally:
        proxy.down()


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def bench_chaos(down_s: float = 20.0, delay_s: float = 2.0, phase_s: float = 15.0) -> dict[str, Any]:
    """Every scenario on a fresh moto_server; the rows of the chaos table. The ingress scenario runs
    on the same app, then again on a second one behind HAProxy."""
    bucket = "pstyle-chaos"
    with loopback_s3_env(bucket) as s3_url, tempfile.TemporaryDirectory() as tmp:
        with chaos_app(s3_url, bucket, Path(tmp) / "proxy") as target:
            *warm, cold = warm_up(target)
            rows = [
                s3_outage(target, warm, cold, down_s),
                s3_slow(target, warm, delay_s, phase_s),
                ingress_killed(target, warm, EVENT_FLUSH_S),
            ]
        boto3.client("s3").create_bucket(Bucket=f"{bucket}-haproxy")  # a fresh store for a fresh app
        with chaos_app(s3_url, f"{bucket}-haproxy", Path(tmp) / "haproxy", haproxy=True) as target:
            *warm, _ = warm_up(target)
            rows.append(ingress_killed(target, warm, EVENT_FLUSH_S, front="HAProxy"))
    return {"benchmark": "chaos", "machine": machine_description(torch.device("cpu")), "rows": rows}


def warm_up(target: Target) -> list[str]:
    """Every user but the last stylizes once, so their key record, alias, adapter and the experiments
    are cached; returns all users, the cold one last."""
    *warm, cold = target.keys
    for user in warm:
        stylize(requests.Session(), target, user)
    return [*warm, cold]


STATUS_NAMES = {0: "conn-error", UNTIMED_503: "503-untimed", FRONT_500: "front-500"}


def _statuses(counts: dict[int, int]) -> str:
    return " ".join(f"{STATUS_NAMES.get(k, k)}:{v}" for k, v in sorted(counts.items()))


def chaos_table(result: dict[str, Any]) -> str:
    lines = [f"{'fault':<40}{'statuses':<34}{'p99 ms':>9}{'recovery s':>12}{'lost':>6}"]
    for row in result["rows"]:
        statuses = _statuses(row["statuses"])
        if "cold_statuses" in row:
            statuses += " | cold " + _statuses(row["cold_statuses"])
        recovery = "-" if row["recovery_s"] is None else f"{row['recovery_s']:.1f}"
        lines.append(f"{row['fault']:<40}{statuses:<34}{row['p99_ms']:>9.0f}{recovery:>12}{row['lost']:>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--down", type=float, default=20.0, help="seconds the S3 endpoint is gone")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds added to each S3 request")
    parser.add_argument("--phase", type=float, default=15.0, help="seconds of load per slow-S3 phase")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args(argv)
    result = bench_chaos(args.down, args.delay, args.phase)
    table = chaos_table(result)
    print(table)
    print(f"wrote {write_result(result, table, args.out)}")


if __name__ == "__main__":
    main()

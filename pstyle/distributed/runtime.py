"""The one place pstyle starts or joins Ray, and picks free loopback ports for what it starts."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
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
    ray.init(address=address, **options)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server this process is about to start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

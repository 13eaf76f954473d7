"""A loopback TCP proxy that can take a server away or slow it down: S3 faults without touching S3.

`pstyle chaos` and the fault tests put it between pstyle and moto_server. Stopping moto itself
would lose its in-memory bucket; stopping the proxy makes the endpoint unreachable (connections
refused, open ones cut) while the data survives for the recovery. `delay_s` holds every chunk a
client sends for that long before forwarding it: a slow endpoint.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class FaultProxy:
    """Forward 127.0.0.1:`port` to `target`; `down()`, `up()` and `delay_s` inject the faults."""

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = port
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        """Listen (again, on the same port) and forward."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="fault-proxy").start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones: the endpoint is gone."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            _close(conn)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by down()
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._conns |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, delayed: bool) -> None:
        try:
            while data := src.recv(65536):
                if delayed and self.delay_s:
                    time.sleep(self.delay_s)
                dst.sendall(data)
        except OSError:  # cut by down(), or by either end
            return
        finally:
            for conn in (src, dst):
                _close(conn)
                with self._lock:
                    self._conns.discard(conn)


def _close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()

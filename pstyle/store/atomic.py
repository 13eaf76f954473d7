"""Atomic file and folder writes: a reader (a resumed run, a server, another worker) sees the old
artifact or the whole new one, never a half-written one, and a crash leaves no partial artifact."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[str], object], exclusive: bool = False) -> None:
    """Write via `write(tmp_path)` into a sibling temp file, then move it to `path`.

    `exclusive` publishes with a hard link instead of a rename, which fails with FileExistsError
    when `path` already exists: create-if-absent without a lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes, exclusive: bool = False) -> None:
    """`atomic_write` of bytes, flushed to disk before the move (what a store's put promises)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write, exclusive=exclusive)


@contextmanager
def atomic_directory(dest: str | Path) -> Iterator[Path]:
    """Yield a private sibling folder to fill; on success it is renamed to `dest` (readable by all).

    The rename replaces only a missing or empty `dest`; if `dest` already holds files it raises
    OSError, which a caller racing another writer of the same content may treat as success.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp made it private; artifacts are shared with workers and servers
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

"""The artifact store interface: bytes under '/'-separated keys, shared by every node of a cluster.

Two backends implement it (`LocalStore`, `S3Store`); the registry, event log, Tune and Train all
talk to this interface only, so a path and an `s3://` URI are interchangeable everywhere.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator

KEY_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,127}")


class StoreError(RuntimeError):
    """A backend failure that retries did not cure (network, permissions, a bucket that is gone)."""


class KeyNotFound(FileNotFoundError):
    """The key does not exist in the store."""


class KeyExists(FileExistsError):
    """A conditional write lost: something was already stored under the key."""


def check_key(key: str) -> str:
    """Keys are built by pstyle from validated ids, so anything odd is a bug or an attack: refuse it.

    Every segment is alphanumeric-led (no '.', '..', empty or hidden segments), which keeps local
    keys inside the root and S3 keys free of surprises.
    """
    parts = key.split("/")
    if not key or not all(KEY_SEGMENT.fullmatch(part) for part in parts):
        raise ValueError(f"invalid store key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A prefix is '' (everything) or a key, optionally ending in '/'."""
    return prefix if prefix == "" else check_key(prefix.rstrip("/")) + ("/" if prefix.endswith("/") else "")


class Store(ABC):
    """Put/get/list/delete bytes. Writes are atomic: a reader sees the old object, the new one or none."""

    uri: str
    #: True when `put_bytes(..., if_absent=True)` is a real atomic create-if-absent on this backend.
    conditional_writes: bool

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, if_absent: bool = False) -> None:
        """Store `data` under `key`; with `if_absent`, raise KeyExists instead of overwriting."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Return the object's bytes or raise KeyNotFound."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield every key under `prefix` (recursively), in lexicographic order."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete `key`; deleting a missing key is not an error (deletes are idempotent)."""

    @abstractmethod
    def modified(self, key: str) -> float:
        """Last-modified time (Unix seconds), so garbage collection can spare fresh uploads."""

    @abstractmethod
    def arrow_storage(self, prefix: str) -> tuple[str, object | None]:
        """`(storage_path, storage_filesystem)` for Ray Tune/Train's RunConfig, rooted at `prefix`:
        Ray's checkpoints then live in this same store (pyarrow's S3 filesystem for S3)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

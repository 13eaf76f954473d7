"""A store in a local folder: the embedded default (`~/.pstyle`, or `PSTYLE_STORE`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from pstyle.store.atomic import write_bytes_atomic
from pstyle.store.base import KeyExists, KeyNotFound, Store, check_key, check_prefix


class LocalStore(Store):
    """Objects are files under `root`. Writes go to a temp file first, then appear atomically:
    `os.replace` to overwrite, `os.link` to create-if-absent (fails if the name exists)."""

    conditional_writes = True

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_bytes(self, key: str, data: bytes, if_absent: bool = False) -> None:
        try:
            write_bytes_atomic(self._path(key), data, exclusive=if_absent)
        except FileExistsError:
            raise KeyExists(key) from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise KeyNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        prefix = check_prefix(prefix)
        # Walk only the deepest directory the prefix names, then filter by the rest of the prefix.
        base = self.root / prefix.rpartition("/")[0]
        if not base.is_dir():
            return
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):  # temp files of writes in flight
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        yield from sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def arrow_storage(self, prefix: str) -> tuple[str, None]:
        return str(self.root / check_key(prefix)), None

    def modified(self, key: str) -> float:
        try:
            return self._path(key).stat().st_mtime
        except (FileNotFoundError, NotADirectoryError):
            raise KeyNotFound(key) from None

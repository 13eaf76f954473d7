"""Weights that ship inside the package, checked against their pinned sha256 before every load.

`pstyle/weights/SHA256SUMS` lists each shipped file by its path under `pstyle/weights/`, so a
truncated or replaced file is refused with a one-line error that names it, never a traceback.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
CHECKSUMS = WEIGHTS_DIR / "SHA256SUMS"


class PinnedFileError(ValueError):
    """A shipped weights file is missing, or is not the one that was pinned."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_pins(checksums: Path = CHECKSUMS) -> dict[str, str]:
    """Relative path -> sha256, from a `sha256sum`-style file."""
    if not checksums.is_file():
        raise PinnedFileError(f"{checksums}: missing; reinstall pstyle")
    pins = {}
    for line in checksums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        pins[name.strip()] = digest.strip()
    return pins


def verified(path: Path, what: str, checksums: Path = CHECKSUMS) -> Path:
    """`path` after checking it against its pin (keyed by its path relative to `checksums`' folder)."""
    path = Path(path)
    if not path.is_file():
        raise PinnedFileError(f"{path}: the {what} file is missing; reinstall pstyle")
    name = path.relative_to(checksums.parent).as_posix()
    if read_pins(checksums).get(name) != sha256_of(path):
        raise PinnedFileError(f"{path}: sha256 does not match the pinned one (corrupt or replaced)")
    return path


def pin(paths: list[Path], checksums: Path = CHECKSUMS) -> None:
    """Record `paths`' sha256, keeping the other pins."""
    pins = read_pins(checksums) if checksums.is_file() else {}
    pins.update({Path(p).relative_to(checksums.parent).as_posix(): sha256_of(p) for p in paths})
    tmp = checksums.with_suffix(".tmp")
    tmp.write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(pins.items())))
    tmp.replace(checksums)

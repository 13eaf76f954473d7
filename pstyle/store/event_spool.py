"""A write-ahead copy, on the node's disk, of the events an `EventLog` holds in memory.

A server buffers events between flushes; a process killed outright (OOM, SIGKILL, a node agent)
would lose them. With a spool every event is also appended to a segment file in a folder on the
node before `append` returns (written, not fsynced: a killed process loses nothing the kernel has,
a machine crash may). A flush closes the current segment and deletes the closed ones once the
store has their events. The next EventLog on the same folder (the replacement replica on this node)
claims the segments a dead process left and writes their events to the store.

Segment files are named `<pid>-<random>.jsonl` by the process that writes them; claiming one
renames it with the claimer's pid in front, so exactly one process takes it over, and a claimer
that dies in turn leaves it to the next. A process killed between a store write and the deletion
of its segments makes those events land twice; they keep their ids, and `read_events` drops the
repeats.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class EventSpool:
    """Segment files of one process in `folder`; not thread-safe (the EventLog's lock guards it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = None
        self._path: Path | None = None
        self._closed: list[Path] = []  # segments whose events are buffered or being written

    def append(self, event: dict[str, Any]) -> None:
        if self._file is None:
            self._path = self.folder / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl"
            self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115 - open across calls
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()

    def rotate(self) -> list[Path]:
        """Close the current segment; return every closed segment not yet deleted (the events a
        flush is about to write), handing them to the caller."""
        if self._file is not None:
            self._file.close()
            self._closed.append(self._path)
            self._file = self._path = None
        segments, self._closed = self._closed, []
        return segments

    def written(self, segments: list[Path]) -> None:
        """The store has these segments' events: delete them."""
        for path in segments:
            path.unlink(missing_ok=True)

    def unwritten(self, segments: list[Path]) -> None:
        """A flush failed: these segments stay until a later flush succeeds."""
        self._closed = segments + self._closed

    def claim_orphans(self) -> list[dict[str, Any]]:
        """Take over the segments of dead processes; return their events (a torn last line, from a
        process killed mid-write, is skipped)."""
        events = []
        me = os.getpid()
        for path in sorted(self.folder.glob("*.jsonl")):
            owner = path.name.split("-", 1)[0]
            if not owner.isdigit() or int(owner) == me or _alive(int(owner)):
                continue
            claimed = path.with_name(f"{me}-{path.name}")
            try:
                path.rename(claimed)
            except FileNotFoundError:  # another process claimed it first
                continue
            for line in claimed.read_text(encoding="utf-8").splitlines():
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
            self._closed.append(claimed)
        return events


def spool_folder(store_uri: str) -> Path:
    """The node-local spool of the servers writing to one store (one folder per store, so a server
    never replays another store's events into this one)."""
    digest = hashlib.sha256(store_uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "pstyle-event-spool" / digest

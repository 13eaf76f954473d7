"""The model registry: versioned base models and per-user adapters, with aliases, on any Store.

Layout in the store (every id validated before it becomes part of a key):

    blobs/sha256/<hex>                            file contents, content-addressed
    <bases|adapters>/<owner>/versions/<n:08d>.json  a version's manifest: files → sha256, metadata
    <bases|adapters>/<owner>/aliases/<alias>/<seq:08d>.json   the alias's append-only log; each
                                                  entry holds the alias's history, the last = current

Publishing uploads blobs first and the manifest last, so a reader either sees a whole version or
none; a publisher killed mid-upload leaves only unreferenced blobs, which `gc` removes. Version
numbers and alias log entries are claimed with create-if-absent writes: two concurrent publishers
get distinct numbers, and every alias move is one entry in a total order, so an alias never ends
half-moved. On a backend without conditional writes the claim is check-then-write, which is racy:
run one publisher per owner there (LocalStore and S3 both support conditional writes).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pstyle.ids import validate_id
from pstyle.store import KeyExists, KeyNotFound, Store, check_key
from pstyle.store.atomic import atomic_directory

KINDS = {"base": "bases", "adapter": "adapters"}
OWNER_LABEL = {"base": "base model name", "adapter": "user id"}
BLOBS = "blobs/sha256"
# Which files of a checkpoint/adapter directory make up a published version (not samples, not optimizer).
PUBLISHED_FILES = {
    "base": ("model.safetensors", "meta.json"),
    "adapter": ("adapter.safetensors", "adapter.json"),
}
# A base variant's own files (pstyle.models.variants), published with it when present.
VARIANT_FILES = {"base": ("int8.safetensors", "model.onnx", "model.onnx.data"), "adapter": ()}
MAX_CLAIM_ATTEMPTS = 100
ALIAS_HISTORY = 100  # how many moves back a rollback can go


class IntegrityError(ValueError):
    """Stored bytes do not match the sha256 their manifest promises (corruption or tampering)."""


class RegistryError(ValueError):
    """A version, alias or rollback that does not exist or cannot be done."""


# The aliases every stage agrees on: jobs publish `candidate`; serving answers with `production`.
CANDIDATE_ALIAS = "candidate"
PRODUCTION_ALIAS = "production"


def parse_ref(text: str, what: str = "base model name") -> tuple[str, str]:
    """`NAME[@alias|version|latest]` -> (name, ref): how a registry model is named on the command
    line and in job configs; no ref means `latest`."""
    name, _, ref = text.partition("@")
    return validate_id(name, what), ref or "latest"


@dataclass(frozen=True)
class Version:
    """One published, immutable version: its manifest says which blobs make it up."""

    kind: str
    owner: str
    number: int
    manifest: dict[str, Any]

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return self.manifest["files"]

    def __str__(self) -> str:
        return f"{self.kind} {self.owner} v{self.number}"


class Registry:
    """Publish, resolve, fetch, alias, roll back and garbage-collect versions in one Store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ---- keys -------------------------------------------------------------------------------

    def _root(self, kind: str, owner: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}: expected one of {sorted(KINDS)}")
        return f"{KINDS[kind]}/{validate_id(owner, OWNER_LABEL[kind])}"

    def _version_key(self, kind: str, owner: str, number: int) -> str:
        return f"{self._root(kind, owner)}/versions/{number:08d}.json"

    def _alias_prefix(self, kind: str, owner: str, alias: str) -> str:
        return f"{self._root(kind, owner)}/aliases/{validate_id(alias, 'alias')}/"

    # ---- publish ----------------------------------------------------------------------------

    def publish(
        self,
        kind: str,
        owner: str,
        directory: Path,
        metadata: dict[str, Any] | None = None,
        aliases: Sequence[str] = (),
    ) -> Version:
        """Upload the version's files as blobs, then claim the next version number with its manifest."""
        root = self._root(kind, owner)
        for alias in aliases:
            validate_id(alias, "alias")
        files = {}
        present = [name for name in VARIANT_FILES[kind] if (Path(directory) / name).is_file()]
        for name in (*PUBLISHED_FILES[kind], *present):
            path = Path(directory) / name
            if not path.is_file():
                raise FileNotFoundError(f"{directory}: missing {name}, cannot publish a {kind}")
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            # Always (re)write: refreshes the blob's age, so a concurrent gc cannot reap a shared blob.
            self.store.put_bytes(f"{BLOBS}/{digest}", data)
            files[name] = {"sha256": digest, "size": len(data)}
        manifest = {"kind": kind, "owner": owner, "created": time.time(), "files": files, **(metadata or {})}
        number = self._claim_next(f"{root}/versions/", manifest)
        version = Version(kind, owner, number, manifest)
        for alias in aliases:
            self.set_alias(kind, owner, alias, number)
        return version

    def publish_base(
        self,
        name: str,
        checkpoint_dir: Path,
        metrics: dict[str, Any] | None = None,
        aliases: Sequence[str] = (),
    ) -> Version:
        """Publish a base checkpoint directory; config and fingerprint come from its meta.json."""
        meta = _read_json(Path(checkpoint_dir) / "meta.json")
        info = {
            "config": meta.get("config"),
            "fingerprint": meta.get("fingerprint"),
            "step": meta.get("step"),
            "variant": (meta.get("variant") or {}).get("format", "fp32"),
        }
        return self.publish("base", name, checkpoint_dir, {**info, "metrics": metrics or {}}, aliases)

    def publish_adapter(
        self,
        user_id: str,
        adapter_dir: Path,
        metrics: dict[str, Any] | None = None,
        parent: int | None = None,
        aliases: Sequence[str] = (),
    ) -> Version:
        """Publish a saved adapter; base fingerprint and training config come from its adapter.json."""
        validate_id(user_id)
        meta = _read_json(Path(adapter_dir) / "adapter.json")
        if meta.get("user_id") != user_id:
            raise RegistryError(
                f"{adapter_dir} holds an adapter for {meta.get('user_id')!r}, not {user_id!r}"
            )
        info = {
            "base_fingerprint": meta.get("base_fingerprint"),
            "training": meta.get("training", {}),
            "metrics": metrics if metrics is not None else meta.get("metrics", {}),
            "parent": parent,
        }
        return self.publish("adapter", user_id, adapter_dir, info, aliases)

    def _create(self, key: str, record: dict[str, Any]) -> None:
        """Write `record` under a key nobody has written yet, else raise KeyExists."""
        data = json.dumps(record).encode()
        if self.store.conditional_writes:
            self.store.put_bytes(key, data, if_absent=True)
        else:  # documented fallback: check, then write (racy between concurrent writers)
            if self.store.exists(key):
                raise KeyExists(key)
            self.store.put_bytes(key, data)

    def _claim_next(self, prefix: str, record: dict[str, Any]) -> int:
        """Write `record` as the entry after the newest one under `prefix`; retry when another writer
        claimed that number first. Returns the number claimed."""
        for _ in range(MAX_CLAIM_ATTEMPTS):
            number = self._last_number(prefix) + 1
            try:
                self._create(f"{prefix}{number:08d}.json", record)
                return number
            except KeyExists:
                continue
        raise RegistryError(f"could not claim an entry under {prefix} after {MAX_CLAIM_ATTEMPTS} attempts")

    def _last_number(self, prefix: str) -> int:
        numbers = self._numbers(prefix)
        return numbers[-1] if numbers else 0

    def _numbers(self, prefix: str) -> list[int]:
        return sorted(int(key[len(prefix) :].removesuffix(".json")) for key in self.store.list(prefix))

    # ---- read -------------------------------------------------------------------------------

    def owners(self, kind: str) -> list[str]:
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}: expected one of {sorted(KINDS)}")
        prefix = f"{KINDS[kind]}/"
        return sorted({key[len(prefix) :].split("/", 1)[0] for key in self.store.list(prefix)})

    def versions(self, kind: str, owner: str) -> list[int]:
        return self._numbers(f"{self._root(kind, owner)}/versions/")

    def get(self, kind: str, owner: str, number: int) -> Version:
        try:
            manifest = json.loads(self.store.get_bytes(self._version_key(kind, owner, number)))
        except KeyNotFound:
            raise RegistryError(f"{kind} {owner!r} has no version {number}") from None
        return Version(kind, owner, number, manifest)

    def resolve(self, kind: str, owner: str, ref: str | int = "latest") -> Version:
        """`ref` is a version number, `latest`, or an alias name (e.g. production, candidate)."""
        if isinstance(ref, int) or str(ref).isdigit():
            return self.get(kind, owner, int(ref))
        if ref == "latest":
            numbers = self.versions(kind, owner)
            if not numbers:
                raise RegistryError(f"{kind} {owner!r} has no versions")
            return self.get(kind, owner, numbers[-1])
        number = self.aliases(kind, owner).get(validate_id(ref, "alias"))
        if number is None:
            raise RegistryError(f"{kind} {owner!r} has no alias {ref!r}")
        return self.get(kind, owner, number)

    def read(self, version: Version, name: str) -> bytes:
        """One file of a version, verified against the manifest's sha256."""
        entry = version.files.get(name)
        if entry is None:
            raise RegistryError(f"{version} has no file {name!r}")
        digest = entry["sha256"]
        try:
            data = self.store.get_bytes(check_key(f"{BLOBS}/{digest}"))
        except KeyNotFound:
            raise IntegrityError(f"{version}: blob for {name} ({digest[:12]}…) is missing") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"{version}: {name} does not match its sha256 {digest[:12]}… (corrupt)")
        return data

    def fetch_cached(self, version: Version) -> Path:
        """`fetch` into a per-machine cache keyed by the version's file digests: a store deleted and
        rebuilt at the same address reuses names and version numbers for other weights."""
        files = {name: entry["sha256"] for name, entry in version.files.items()}
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
        folder = f"{version.kind}-{version.owner}-v{version.number}-{digest}"  # ids are validated
        return self.fetch(version, Path(tempfile.gettempdir()) / "pstyle-registry" / folder)

    def fetch(self, version: Version, dest: Path) -> Path:
        """Download and verify a version into `dest` (a directory) and return it.

        Files land in a temporary sibling first and the directory is renamed into place, so `dest`
        only ever exists complete; versions are immutable, so an existing `dest` is reused as is.
        """
        dest = Path(dest)
        if dest.is_dir():
            return dest
        try:
            with atomic_directory(dest) as tmp:
                for name in version.files:
                    check_key(name)  # a tampered manifest must not write outside `dest`
                    (tmp / name).write_bytes(self.read(version, name))
        except OSError:
            if dest.is_dir():  # another process fetched the same version first
                return dest
            raise
        return dest

    # ---- aliases ----------------------------------------------------------------------------

    def set_alias(self, kind: str, owner: str, alias: str, number: int) -> None:
        """Point `alias` at an existing version."""
        validate_id(alias, "alias")
        self.get(kind, owner, number)  # refuse dangling aliases
        self._update_alias(kind, owner, alias, lambda history: [*history, number])

    def rollback(self, kind: str, owner: str, alias: str) -> int:
        """Undo the alias's last move: it points where it pointed before. Returns that version."""

        def undo(history: list[int]) -> list[int]:
            if len(history) < 2:
                raise RegistryError(
                    f"alias {alias!r} of {kind} {owner!r} has no earlier version to roll back to"
                )
            self.get(kind, owner, history[-2])  # gc keeps only current alias targets: it may be gone
            return history[:-1]

        return self._update_alias(kind, owner, alias, undo)

    def alias_history(self, kind: str, owner: str, alias: str) -> list[int]:
        """The versions `alias` has pointed to that a rollback can return to, oldest first; last = current."""
        return self._alias_head(self._alias_prefix(kind, owner, alias))[1]

    def aliases(self, kind: str, owner: str) -> dict[str, int]:
        prefix = f"{self._root(kind, owner)}/aliases/"
        names = sorted({key[len(prefix) :].split("/", 1)[0] for key in self.store.list(prefix)})
        current = {name: self.alias_history(kind, owner, name) for name in names}
        return {name: history[-1] for name, history in current.items() if history}

    def _alias_head(self, prefix: str) -> tuple[int, list[int]]:
        """The newest log entry's number and history (each entry holds the whole history: one read)."""
        number = self._last_number(prefix)
        if number == 0:
            return 0, []
        return number, json.loads(self.store.get_bytes(f"{prefix}{number:08d}.json"))["history"]

    def _update_alias(
        self, kind: str, owner: str, alias: str, change: Callable[[list[int]], list[int]]
    ) -> int:
        """Compare-and-swap on the alias log: read the head, write the next entry only if nobody else
        did meanwhile (create-if-absent), else retry on the new head. Returns the new current version."""
        prefix = self._alias_prefix(kind, owner, alias)
        for _ in range(MAX_CLAIM_ATTEMPTS):
            number, history = self._alias_head(prefix)
            new = change(history)[-ALIAS_HISTORY:]
            try:
                self._create(f"{prefix}{number + 1:08d}.json", {"history": new, "time": time.time()})
                return new[-1]
            except KeyExists:
                continue
        raise RegistryError(f"could not move alias {alias!r} after {MAX_CLAIM_ATTEMPTS} attempts")

    # ---- retention --------------------------------------------------------------------------

    def gc(self, keep_last: int = 5, grace_s: float = 3600.0) -> dict[str, int]:
        """Delete versions beyond the newest `keep_last` per owner that no alias points to, then blobs
        no manifest references. Blobs younger than `grace_s` are spared: they may belong to a publish
        whose manifest is not written yet."""
        if keep_last < 1:
            raise ValueError("keep_last must be at least 1")
        deleted_versions = 0
        referenced: set[str] = set()
        for kind in KINDS:
            for owner in self.owners(kind):
                aliased = set(self.aliases(kind, owner).values())
                numbers = self.versions(kind, owner)
                for number in numbers:
                    if number in aliased or number in numbers[-keep_last:]:
                        referenced.update(f["sha256"] for f in self.get(kind, owner, number).files.values())
                    else:
                        self.store.delete(self._version_key(kind, owner, number))
                        deleted_versions += 1
        deleted_blobs = 0
        now = time.time()
        for key in list(self.store.list(f"{BLOBS}/")):
            if key.rsplit("/", 1)[1] not in referenced and now - self.store.modified(key) >= grace_s:
                self.store.delete(key)
                deleted_blobs += 1
        return {"deleted_versions": deleted_versions, "deleted_blobs": deleted_blobs}


def describe(versions: Iterable[Version], aliases: dict[str, int]) -> list[dict[str, Any]]:
    """Rows for `pstyle registry ls/show`: version, created, aliases, metrics."""
    by_version: dict[int, list[str]] = {}
    for name, number in aliases.items():
        by_version.setdefault(number, []).append(name)
    return [
        {
            "version": v.number,
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.manifest["created"])),
            "aliases": sorted(by_version.get(v.number, [])),
            "metrics": v.manifest.get("metrics", {}),
        }
        for v in versions
    ]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a checkpoint/adapter directory")
    return json.loads(path.read_text())  # a JSONDecodeError is a ValueError: one line on the CLI

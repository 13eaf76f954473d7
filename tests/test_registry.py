"""The registry on both backends: atomic publish, concurrency, integrity, aliases, retention."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pstyle.config import PStyleConfig
from pstyle.models.style_model import StyleModel
from pstyle.store import Store
from pstyle.store.registry import IntegrityError, Registry, RegistryError
from pstyle.training.checkpoint import save_checkpoint

FP = "f" * 64


@pytest.fixture
def adapters(tmp_path: Path, make_adapter) -> list[Path]:  # noqa: ANN001
    return [make_adapter(tmp_path / f"a{i}", "alice", seed=i) for i in range(3)]


def test_publish_fetch_round_trip(store: Store, adapters: list[Path], tmp_path: Path) -> None:
    reg = Registry(store)
    v1 = reg.publish_adapter("alice", adapters[0], metrics={"swd": 1.0}, aliases=["candidate"])
    v2 = reg.publish_adapter("alice", adapters[1], parent=v1.number)
    assert (v1.number, v2.number) == (1, 2)
    assert reg.versions("adapter", "alice") == [1, 2]
    assert reg.owners("adapter") == ["alice"]
    got = reg.resolve("adapter", "alice", "candidate")
    assert got.number == 1 and got.manifest["metrics"] == {"swd": 1.0}
    assert got.manifest["base_fingerprint"] == FP
    assert reg.resolve("adapter", "alice", "latest").manifest["parent"] == 1
    out = reg.fetch(reg.resolve("adapter", "alice", 2), tmp_path / "fetched")
    for name in ("adapter.safetensors", "adapter.json"):
        assert (out / name).read_bytes() == (adapters[1] / name).read_bytes()


def test_base_publish_records_config_and_fingerprint(store: Store, small_model_cfg, tmp_path: Path) -> None:  # noqa: ANN001
    config = PStyleConfig(model=small_model_cfg)
    meta = save_checkpoint(tmp_path / "ckpt", StyleModel(small_model_cfg), config, {"kind": "random"}, step=7)
    version = Registry(store).publish_base("tiny", tmp_path / "ckpt", {"swd": 2.0}, aliases=["candidate"])
    assert version.manifest["fingerprint"] == meta["fingerprint"]
    assert PStyleConfig.from_dict(version.manifest["config"]) == config
    assert Registry(store).resolve("base", "tiny", "candidate").manifest["step"] == 7


def test_alias_moves_and_rolls_back(store: Store, adapters: list[Path]) -> None:
    reg = Registry(store)
    for path in adapters:
        reg.publish_adapter("alice", path, aliases=["production"])
    assert reg.aliases("adapter", "alice") == {"production": 3}
    assert reg.rollback("adapter", "alice", "production") == 2
    assert reg.rollback("adapter", "alice", "production") == 1
    assert reg.resolve("adapter", "alice", "production").number == 1
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback("adapter", "alice", "production")
    reg.set_alias("adapter", "alice", "production", 3)
    assert reg.aliases("adapter", "alice") == {"production": 3}
    with pytest.raises(RegistryError, match="no version 9"):
        reg.set_alias("adapter", "alice", "production", 9)
    with pytest.raises(RegistryError, match="no alias 'beta'"):
        reg.resolve("adapter", "alice", "beta")


def test_tampered_blob_is_refused(store: Store, adapters: list[Path], tmp_path: Path) -> None:
    reg = Registry(store)
    version = reg.publish_adapter("alice", adapters[0])
    digest = version.files["adapter.safetensors"]["sha256"]
    data = bytearray(store.get_bytes(f"blobs/sha256/{digest}"))
    data[-1] ^= 0xFF
    store.put_bytes(f"blobs/sha256/{digest}", bytes(data))
    with pytest.raises(IntegrityError, match="does not match its sha256"):
        reg.fetch(reg.resolve("adapter", "alice", 1), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-fetched is left visible


@pytest.mark.parametrize(
    "bad", ["", "..", "../bob", "a/b", "bob/..", "a\x00b", "a\nb", ".hidden", "x" * 65, "al ice", "é"]
)
def test_hostile_ids_rejected_before_storage(bad: str, tmp_path: Path, adapters: list[Path]) -> None:
    from pstyle.store import LocalStore

    reg = Registry(LocalStore(tmp_path / "store"))
    for call in (
        lambda: reg.publish_adapter(bad, adapters[0]),
        lambda: reg.resolve("adapter", bad, "production"),
        lambda: reg.versions("base", bad),
        lambda: reg.set_alias("adapter", "alice", bad, 1),
    ):
        with pytest.raises(ValueError, match="invalid"):
            call()
    assert not (tmp_path / "store").exists()


def test_concurrent_publishers_get_distinct_versions(store: Store, adapters: list[Path]) -> None:
    barrier = threading.Barrier(4)
    published: list[int] = []
    errors: list[BaseException] = []

    def publisher(i: int) -> None:
        reg = Registry(store)
        barrier.wait()
        try:
            for _ in range(3):
                published.append(reg.publish_adapter("alice", adapters[i % 3], aliases=["production"]).number)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    reg = Registry(store)
    assert sorted(published) == list(range(1, 13)) == reg.versions("adapter", "alice")
    assert len(reg.alias_history("adapter", "alice", "production")) == 12
    assert reg.aliases("adapter", "alice")["production"] in published


def test_retention_keeps_last_n_and_aliased(store: Store, adapters: list[Path]) -> None:
    reg = Registry(store)
    for i in range(6):
        reg.publish_adapter("alice", adapters[i % 3], aliases=["production"] if i == 1 else [])
    report = reg.gc(keep_last=2, grace_s=0)
    assert reg.versions("adapter", "alice") == [2, 5, 6]
    assert report["deleted_versions"] == 3
    # Versions 2, 5, 6 are adapters[1], adapters[1], adapters[2]: adapters[0]'s tensors are unreferenced.
    assert report["deleted_blobs"] >= 1
    for number in (2, 5, 6):
        reg.read(reg.get("adapter", "alice", number), "adapter.safetensors")  # still loadable


KILLED_PUBLISHER = """
import sys, time
from pathlib import Path
from pstyle.store.registry import Registry
from pstyle.store import open_store

store = open_store(sys.argv[1])
put = store.put_bytes
def slow_put(key, data, if_absent=False):
    put(key, data, if_absent)
    print("put", key, flush=True)
    time.sleep(60)  # an upload that never finishes: the parent kills us here
store.put_bytes = slow_put
Registry(store).publish_adapter("alice", Path(sys.argv[2]), aliases=["production"])
"""


def test_killed_publisher_leaves_nothing_visible(store_uri: str, store: Store, adapters: list[Path]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_PUBLISHER, store_uri, str(adapters[0])],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("put blobs/sha256/"), line
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    reg = Registry(store)
    assert reg.versions("adapter", "alice") == []
    assert reg.aliases("adapter", "alice") == {}
    with pytest.raises(RegistryError):
        reg.resolve("adapter", "alice", "latest")
    assert list(store.list("blobs/")), "the killed publisher had uploaded a blob"
    assert reg.gc(keep_last=1, grace_s=3600)["deleted_blobs"] == 0  # young orphans are spared
    assert reg.gc(keep_last=1, grace_s=0)["deleted_blobs"] == 1
    assert list(store.list("blobs/")) == []


def test_manifest_records_sizes(store: Store, adapters: list[Path]) -> None:
    version = Registry(store).publish_adapter("alice", adapters[0])
    meta = json.loads((adapters[0] / "adapter.json").read_text())
    assert version.files["adapter.safetensors"]["sha256"] == meta["sha256"]
    assert version.files["adapter.json"]["size"] == (adapters[0] / "adapter.json").stat().st_size

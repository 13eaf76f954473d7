"""`pstyle registry …` end to end on a local store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pstyle.cli.main import cli
from pstyle.store import LocalStore
from pstyle.store.registry import Registry


@pytest.fixture
def run(tmp_path: Path):  # noqa: ANN201
    store = str(tmp_path / "store")

    def invoke(*args: str) -> str:
        result = CliRunner().invoke(cli, [*args, "--store", store], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    return invoke


def test_publish_alias_rollback_gc(run, tmp_path: Path, make_adapter) -> None:  # noqa: ANN001
    dirs = [make_adapter(tmp_path / f"a{i}", "alice", seed=i) for i in range(3)]
    for d in dirs:
        assert "published adapter alice v" in run(
            "registry", "publish", "adapter", "alice", str(d), "--alias", "production"
        )
    assert "alice" in run("registry", "ls", "adapter") and "production=v3" in run("registry", "ls", "adapter")
    assert "production -> v2" in run("registry", "rollback", "adapter", "alice", "production")
    assert "candidate -> v3" in run("registry", "alias", "adapter", "alice", "candidate", "3")
    lines = run("registry", "show", "adapter", "alice").splitlines()
    assert [line.split()[0] for line in lines] == ["v1", "v2", "v3"]
    assert "production" in lines[1] and "candidate" in lines[2]
    assert "deleted 1 versions" in run("registry", "gc", "--keep", "1", "--grace", "0")
    assert Registry(LocalStore(tmp_path / "store")).versions("adapter", "alice") == [2, 3]


def test_bad_input_is_one_line_and_exit_1(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pstyle", "registry", "rollback", "adapter", "../bob", "production",
         "--store", str(tmp_path / "s")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: invalid user id '../bob'")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_disk_full_during_publish_is_one_line_and_leaves_no_version(
    tmp_path: Path, make_adapter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:  # noqa: ANN001
    """The second blob of the publish hits ENOSPC (as fsync reports a full disk): the command fails
    with one line naming it, no version appears, the alias stays, and no temp file is left behind."""
    import errno
    import os

    from pstyle.cli.main import main

    store = tmp_path / "store"
    first, second = (
        make_adapter(tmp_path / "a0", "alice", seed=0),
        make_adapter(tmp_path / "a1", "alice", seed=1),
    )
    Registry(LocalStore(store)).publish_adapter("alice", first, aliases=["production"])
    real_fsync, syncs = os.fsync, []

    def full_disk(fd: int) -> None:
        syncs.append(fd)
        if len(syncs) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr("pstyle.store.atomic.os.fsync", full_disk)
    argv = ["pstyle", "registry", "publish", "adapter", "alice", str(second), "--alias", "production"]
    monkeypatch.setattr(sys, "argv", [*argv, "--store", str(store)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1 and "No space left on device" in err, err
    registry = Registry(LocalStore(store))
    assert registry.versions("adapter", "alice") == [1]
    assert registry.aliases("adapter", "alice") == {"production": 1}
    assert [p for p in store.rglob("*") if p.name.startswith(".")] == []

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

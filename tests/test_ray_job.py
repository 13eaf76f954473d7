"""A real `ray job submit` of the tiny search to a `ray start --head` cluster on loopback."""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.tune import REPO, kill_session, tiny_tune_config

from pstyle.distributed.runtime import free_port

BIN = Path(sys.executable).parent  # the venv's `ray` and `python`


@pytest.fixture
def ray_head() -> Iterator[dict]:
    """`ray start --head --block` on 127.0.0.1 with free ports and its own temp dir, token auth on.

    The token is passed as RAY_AUTH_TOKEN to the cluster and the job client alike (Ray 2.60 enables
    token auth for `ray start --head`; the default would write ~/.ray/auth_token). Stopped by ending
    the session of the `ray start` process this fixture started: `ray stop` would kill every Ray on
    the machine, other tests' local clusters included.
    """
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # the entrypoint's `python` is the venv's
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    dashboard = free_port()
    ports = {
        "port": free_port(),
        "dashboard-port": dashboard,
        "ray-client-server-port": free_port(),
        "dashboard-agent-listen-port": free_port(),
        "dashboard-agent-grpc-port": free_port(),
        "runtime-env-agent-port": free_port(),
        "metrics-export-port": free_port(),
        "node-manager-port": free_port(),
        "object-manager-port": free_port(),
    }
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
    ]
    cmd += [f"--{name}={port}" for name, port in ports.items()]
    cmd += ["--num-cpus=2", "--include-dashboard=true", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    log = Path(temp_dir) / "ray-start.log"
    with log.open("w") as out:
        head = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        request = urllib.request.Request(f"{address}/api/version", headers=_auth(env))
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(request, timeout=2)
                break
            except (urllib.error.URLError, OSError):
                assert head.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the Ray dashboard did not come up"
                time.sleep(0.5)
        yield {"address": address, "env": env}
    finally:
        kill_session(head.pid)
        head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_the_tiny_search(ray_head, small_model_cfg, tmp_path):
    from pstyle.store import open_store
    from pstyle.store.registry import Registry

    store = tmp_path / "store"
    # No --data: the trials synthesize the dataset on their node (the path a fresh cluster takes).
    cfg = tiny_tune_config(small_model_cfg, store, None, "job", num_samples=2, iterations=2)
    cfg.save(tmp_path / "tune.yaml")
    submission = f"tune-{uuid.uuid4().hex[:8]}"
    env, address = ray_head["env"], ray_head["address"]
    job = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--submission-id", submission,
         "--working-dir", ".", "--",
         "python", "ray_jobs/tune_base.py", "--config", str(tmp_path / "tune.yaml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    logs = job.stdout[-4000:] + job.stderr[-2000:]
    assert job.returncode == 0, logs
    request = urllib.request.Request(f"{address}/api/jobs/{submission}", headers=_auth(env))
    info = json.loads(urllib.request.urlopen(request, timeout=10).read())
    assert info["status"] == "SUCCEEDED", info
    assert "alias candidate" in job.stdout, logs

    backend = open_store(store)
    rows = list(csv.DictReader(io.StringIO(backend.get_bytes("tune/job/trials.csv").decode())))
    assert len(rows) == 2 and all(r["status"] in ("terminated", "stopped_early") for r in rows)
    assert backend.get_bytes("tune/job/pareto.png")[:4] == b"\x89PNG"
    version = Registry(backend).resolve("base", "base", "candidate")
    assert version.manifest["metrics"]["tune_experiment"] == "job"
    assert any(key.endswith("model.safetensors") for key in backend.list("ray/tune/job/"))


def _auth(env: dict) -> dict:
    return {"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"}

"""`pstyle demo --tiny` end to end (a real local Ray: Tune, Train, Serve over HTTP) on an S3 store."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import make_bucket

from pstyle.demo.pipeline import MARKER, balanced_experiment, prepare_out
from pstyle.images import load_image
from pstyle.store import open_store
from pstyle.store.registry import Registry

STAGES = ["data", "tune", "train", "adapters", "serve", "report"]


def keep_serving_then_interrupt(cmd: list[str]) -> tuple[int, str]:
    """Run `pstyle demo --keep-serving` until it prints the page's URL; check the page and the admin
    key it printed over HTTP, then Ctrl-C (SIGINT) it. Returns its exit code and output."""
    proc = subprocess.Popen([*cmd, "--keep-serving"], stdout=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C stops it"):
                break
        output = "".join(lines)
        url = re.search(r"The demo's app is up: (http://127\.0\.0\.1:\d+)/ui/", output)
        admin = re.search(r"admin \(Operator page\)\s+(\S+)", output)
        assert url and admin, output[-3000:]
        page = requests.get(f"{url[1]}/ui/", timeout=30)
        assert page.ok and "Content-Security-Policy" in page.headers
        me = requests.get(f"{url[1]}/v1/me", headers={"Authorization": f"Bearer {admin[1]}"}, timeout=30)
        assert me.ok and me.json()["admin"] is True
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, output + rest


def test_tiny_demo_runs_every_stage_and_writes_the_report(s3_env: str, tmp_path: Path):
    """On S3, as on a cluster (the local store is the rest of the suite's); the demo then keeps
    serving after the report, until interrupted."""
    out = tmp_path / "demo"
    demo_store = f"s3://{make_bucket(s3_env)}/demo"
    code, stdout = keep_serving_then_interrupt(
        [sys.executable, "-m", "pstyle", "demo", "--tiny", "--out", str(out), "--store", demo_store]
    )
    assert "stopping the app" in stdout
    assert code == 0, stdout[-6000:]
    assert re.search(r"stage times: data [\d.]+s, tune .* report [\d.]+s", stdout)

    state = json.loads((out / "demo.json").read_text())
    assert list(state["timings"]) == STAGES and all(t > 0 for t in state["timings"].values())
    store = open_store(demo_store)
    registry = Registry(store)
    assert registry.aliases("base", "base")["production"] == state["base"]["version"]
    users = sorted(state["adapters"]["production"])
    assert len(users) == 3
    for user in users:  # two published versions each: production (short) and candidate (longer)
        versions = {alias: jobs[user]["version"] for alias, jobs in state["adapters"].items()}
        assert (
            registry.versions("adapter", user) == sorted(versions.values())
            and len(set(versions.values())) == 2
        )

    serving = json.loads((out / "serving.json").read_text())
    per_user = [r for r in serving["requests"] if r["stage"] == "users"]
    assert {r["user"] for r in per_user} == set(users)
    assert all(
        r["adapter_version"] == state["adapters"]["production"][r["user"]]["version"] for r in per_user
    )
    ab = [r for r in serving["requests"] if r["stage"] == "ab"]
    assert {r["variant"] for r in ab} == {"production", "candidate"} and all(
        1 <= r["rating"] <= 5 for r in ab
    )
    report = serving["ab_report"]
    assert sum(v["ratings"] for v in report["variants"].values()) == len(ab)

    html = (out / "report.html").read_text()
    for heading in ("Users", "Hyperparameter search (Ray Tune)", "Serving", "A/B experiment", "Stages"):
        assert f">{heading}</h" in html
    assert html.count('src="data:image/png;base64,') == len(users) + 3  # grids, Pareto, newcomer, latency
    newcomer = serving["newcomer"]  # a user with no adapter, served zero-shot from their style set
    assert newcomer["first_ms"] > 0 and newcomer["cached_ms"] > 0 and "A new user's first result" in html
    assert load_image(out / "served" / "newcomer.png").shape[0] == 3
    for user in users:
        grid = load_image(out / "figures" / f"{user}.png")
        # one row: content, the 3 training style images, base, adapter, adapter on the subject
        assert grid.shape[1] < 2 * 32 and grid.shape[2] >= 7 * 32
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == set(users)
    assert all(set(m) == {"identity", "colour transfer", "base", "adapter"} for m in metrics.values())
    assert all((out / "figures" / name).stat().st_size > 1000 for name in ("pareto.png", "latency.png"))


def test_demo_output_folder_is_only_cleared_when_the_demo_made_it(tmp_path: Path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not made by `pstyle demo`"):
        prepare_out(mine)
    assert (mine / "thesis.txt").read_text() == "precious"
    ours = tmp_path / "ours"
    prepare_out(ours)
    (ours / "old.json").write_text("{}")
    prepare_out(ours)  # a rerun starts afresh
    assert sorted(p.name for p in ours.iterdir()) == [MARKER]


def test_ab_split_is_the_same_whatever_the_run_is_called():
    """The experiment's name carries the run's timestamp; the split of the demo's users must not."""
    from pstyle.serving.experiments import Experiment, assign

    users = ["dots-001", "halftone-007", "mosaic-004", "plaid-006"]
    splits = []
    for run in ("demo-20261201-232953", "demo-20261202-001556"):
        exp = Experiment.from_dict(balanced_experiment(users, run))
        splits.append({u: assign(exp, u).name for u in users})
    alternate = {u: ("production", "candidate")[i % 2] for i, u in enumerate(users)}
    assert splits[0] == splits[1] == alternate

"""Ray Tune search: config, Pareto logic, and tiny real searches on a local Ray (folder and S3 stores),
with a retried failing trial, a SIGKILLed trial process and a killed-then-resubmitted experiment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from fixtures.tune import REPO, kill_session, tiny_tune_config

from pstyle.config import Param, TuneConfig
from pstyle.distributed.tune_results import choose, dominates, eligible, pareto_front, score
from pstyle.training.checkpoint import load_checkpoint, read_meta

# ---------------------------------------------------------------------------- pure logic, no Ray


def test_tune_config_file_round_trip_and_overrides(tmp_path):
    cfg = TuneConfig().with_overrides({
        "iterations": 4,
        "base.train.image_size": 32,
        "space.train.lr_g": {"low": "5e-5", "high": 1e-3, "log": True},  # YAML 1.1 reads 5e-5 as text
        "space.loss.style": None,
    })  # fmt: skip
    assert cfg.iterations == 4 and cfg.base.train.image_size == 32
    assert cfg.space["train.lr_g"] == Param(5e-5, 1e-3, log=True)
    assert "loss.style" not in cfg.space
    for suffix in (".yaml", ".json"):
        cfg.save(tmp_path / f"t{suffix}")
        assert TuneConfig.load(tmp_path / f"t{suffix}") == cfg
    # a file names only what it changes in `base` (merged onto the default base)...
    (tmp_path / "partial.yaml").write_text("base: {train: {batch_size: 4}}\nnum_samples: 3\n")
    partial = TuneConfig.load(tmp_path / "partial.yaml")
    assert partial.base.train.batch_size == 4 and partial.base.model == TuneConfig().base.model
    # ...and a trial's config is the base with the sampled values applied
    trial = cfg.trial_config({"train.lr_g": 3e-4, "model.channels": 8})
    assert trial.train.lr_g == 3e-4 and trial.model.channels == 8 and trial.train.steps == 4 * 20


@pytest.mark.parametrize(
    "overrides",
    [
        {"bogus": 1},
        {"base.train.bogus": 1},
        {"space.train.nope": {"low": 1, "high": 2}},  # not a config key
        {"space.train.lr_g": {"low": 0, "high": 1, "log": True}},
        {"space.model.channels": {"choices": []}},
        {"search": "grid"},
        {"scheduler": "hyperband"},
        {"name": "../escape"},
        {"iterations": 0},
    ],
)
def test_tune_config_rejects_bad_settings(overrides):
    with pytest.raises((KeyError, ValueError)):
        TuneConfig().with_overrides(overrides)


def test_pareto_front_and_the_chosen_point():
    def row(tid, swd, ssim, iterations=3, status="terminated"):
        return {"trial_id": tid, "status": status, "iterations": iterations, "swd": swd, "ssim": ssim,
                "score": None if swd is None else score(swd, ssim, 300.0, 0.5)}  # fmt: skip

    rows = [
        row("a", 200, 0.10),
        row("b", 210, 0.30),  # worse SWD, better SSIM: on the front
        row("c", 220, 0.20),  # dominated by b
        row("d", 250, 0.05),  # dominated by a
        row("e", 150, 0.90, iterations=1, status="stopped_early"),  # would dominate all: not eligible
        row("f", None, None, iterations=0, status="error"),
    ]
    pool = eligible(rows, iterations=3)
    assert [r["trial_id"] for r in pool] == ["a", "b", "c", "d"]
    front = pareto_front(pool)
    assert [r["trial_id"] for r in front] == ["a", "b"]
    assert dominates(rows[1], rows[2]) and not dominates(rows[0], rows[1])
    chosen = choose(front)
    assert chosen["trial_id"] == "b"  # 0.7 + 0.35 < 0.667 + 0.45
    assert chosen is min(pool, key=lambda r: r["score"])  # the score's minimum is always on the front
    # with no full-budget trial (tiny searches), every trial that reported is eligible
    assert [r["trial_id"] for r in eligible(rows[4:], iterations=3)] == ["e"]
    with pytest.raises(ValueError):
        choose([])


def test_max_concurrent_trials_follows_cluster_resources():
    from pstyle.distributed.tune import max_concurrent

    cfg = TuneConfig()
    assert max_concurrent(cfg, {"CPU": 2.0}) == 2
    assert max_concurrent(cfg.with_overrides({"cpus_per_trial": 0.5}), {"CPU": 2.0}) == 4
    gpu = cfg.with_overrides({"gpus_per_trial": 0.25})
    assert max_concurrent(gpu, {"CPU": 16.0, "GPU": 1.0}) == 4  # fractional GPUs pack 4 trials
    assert max_concurrent(cfg.with_overrides({"max_concurrent_trials": 3}), {"CPU": 64.0}) == 3
    with pytest.raises(ValueError):
        max_concurrent(gpu, {"CPU": 16.0})  # asks for GPUs the cluster does not have
    autoscaling = gpu.with_overrides({"autoscale": True})  # no GPU node yet: pending trials ask for one
    assert max_concurrent(autoscaling, {"CPU": 4.0}) == 0
    assert max_concurrent(autoscaling.with_overrides({"max_concurrent_trials": 2}), {"CPU": 4.0}) == 2


def test_the_multi_objective_searcher_learns_only_from_full_budget_trials():
    """A trial ASHA stopped early reaches Optuna as pruned; one that ran every iteration as complete,
    with its two objectives."""
    from optuna.trial import TrialState
    from ray import tune

    from pstyle.distributed.tune import _searcher

    cfg = TuneConfig().with_overrides({"search": "optuna", "iterations": 4})
    limiter = _searcher(cfg, limit=2)
    limiter.set_search_properties(None, None, {"lr": tune.uniform(1e-4, 1e-2)})
    assert limiter.suggest("stopped") is not None and limiter.suggest("finished") is not None
    limiter.on_trial_complete("stopped", {"swd": 0.1, "ssim": 0.9, "training_iteration": 2})
    limiter.on_trial_complete("finished", {"swd": 0.2, "ssim": 0.8, "training_iteration": 4})
    trials = limiter.searcher._ot_study.trials
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE]
    assert trials[1].values == [0.2, 0.8]
    assert not hasattr(_searcher(cfg, limit=0), "searcher")  # no limit (autoscale): no ConcurrencyLimiter


def test_tuning_modules_do_not_import_ray():
    code = (
        "import sys, pstyle.distributed.tune, pstyle.distributed.tune_results, pstyle.bench.tune, "
        "pstyle.cli.tune; "
        "print([m for m in sys.modules if m.split('.')[0] == 'ray'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------ on a local Ray


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray (never a cluster some other test started with `ray start`)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def _candidate(store, name="base"):
    from pstyle.store.registry import Registry

    return Registry(store).resolve("base", name, "candidate")


def _check_candidate(store, summary, tmp_path):
    """The chosen trial's checkpoint is the registered candidate, and it loads."""
    from pstyle.store.registry import Registry

    version = _candidate(store)
    assert version.number == summary["version"]
    assert version.manifest["metrics"]["tune_trial"] == summary["chosen"]["trial_id"]
    model, meta = load_checkpoint(Registry(store).fetch(version, tmp_path / "candidate"))
    params = {k: summary["chosen"][k] for k in ("train.lr_g", "loss.content", "model.w_dim")}
    assert meta["config"]["train"]["lr_g"] == pytest.approx(params["train.lr_g"])
    assert meta["config"]["loss"]["content"] == pytest.approx(params["loss.content"])
    assert model.cfg.w_dim == params["model.w_dim"]
    assert meta["step"] == summary["chosen"]["step"]


def test_tiny_optuna_asha_search_writes_outputs_and_registers_a_candidate(
    ray_local, small_model_cfg, synth_dir, tmp_path
):
    from pstyle.distributed.tune import run_search
    from pstyle.store import open_store

    cfg = tiny_tune_config(small_model_cfg, tmp_path / "store", synth_dir, "tiny")
    summary = run_search(cfg, log=lambda _: None)
    store = open_store(cfg.store)
    rows = summary["rows"]
    assert not summary["restored"] and len(rows) == 4
    assert all(r["status"] in ("terminated", "stopped_early") and r["error"] is None for r in rows)
    assert any(r["status"] == "terminated" and r["iterations"] == 3 for r in rows)
    for r in rows:  # objectives as documented; every trial checkpointed into the store
        assert r["swd"] > 0 and -1 <= r["ssim"] <= 1
        assert r["score"] == pytest.approx(score(r["swd"], r["ssim"], r["swd_identity"], cfg.ssim_weight))
        assert store.exists(
            f"ray/tune/tiny/trial-{r['trial_id']}/checkpoint_{r['iterations'] - 1:06d}/model.safetensors"
        )

    # results table, front, plot, chosen configuration
    table = store.get_bytes("tune/tiny/trials.csv").decode().splitlines()
    assert len(table) == 5 and {"trial_id", "swd", "ssim", "score", "train.lr_g"} <= set(table[0].split(","))
    assert json.loads(store.get_bytes("tune/tiny/trials.json")) == json.loads(json.dumps(rows))
    front = json.loads(store.get_bytes("tune/tiny/pareto.json"))["front"]
    pool = eligible(rows, cfg.iterations)
    assert front and all(not any(dominates(o, f) for o in pool) for f in front)
    assert {f["trial_id"] for f in front} == {r["trial_id"] for r in pareto_front(pool)}
    assert store.get_bytes("tune/tiny/pareto.png")[:8] == b"\x89PNG\r\n\x1a\n"
    chosen = json.loads(store.get_bytes("tune/tiny/chosen.json"))
    assert (
        chosen["trial_id"] == summary["chosen"]["trial_id"] == min(pool, key=lambda r: r["score"])["trial_id"]
    )
    assert chosen["registry"] == {"kind": "base", "name": "base", "version": 1, "alias": "candidate"}
    _check_candidate(store, summary, tmp_path)
    ckpt = Path(summary["chosen"]["checkpoint"])  # Tune's checkpoints are plain pstyle checkpoints
    assert (
        read_meta(ckpt)["step"] == summary["chosen"]["step"] and (ckpt / "train_state.safetensors").is_file()
    )
    assert not list(ckpt.glob("*.pkl"))  # nothing pickled

    # Submitting the same name again restores the finished experiment: nothing reruns, no new version.
    again = run_search(cfg, log=lambda _: None)
    assert again["restored"] and again["rows"] == rows and again["version"] == summary["version"]
    assert _candidate(store).number == 1


def test_tiny_random_search_against_s3(ray_local, small_model_cfg, synth_dir, s3_env, tmp_path):
    import boto3

    from pstyle.distributed.tune import run_search
    from pstyle.store import open_store

    bucket = f"tune-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    cfg = tiny_tune_config(
        small_model_cfg,
        f"s3://{bucket}/pstyle",
        synth_dir,
        "s3run",
        num_samples=2,
        iterations=2,
        search="random",
        scheduler="none",
    )
    summary = run_search(cfg, log=lambda _: None)
    assert [r["status"] for r in summary["rows"]] == ["terminated", "terminated"]
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]}
    for r in summary["rows"]:  # Tune's checkpoints (safetensors) live in the bucket
        assert f"pstyle/ray/tune/s3run/trial-{r['trial_id']}/checkpoint_000001/model.safetensors" in keys
        assert r["checkpoint"].startswith(f"{bucket}/pstyle/ray/tune/s3run/")
    for name in (
        "trials.csv",
        "trials.json",
        "pareto.json",
        "pareto.png",
        "chosen.json",
        "chosen-config.yaml",
    ):
        assert f"pstyle/tune/s3run/{name}" in keys
    assert summary["outputs"]["pareto.png"] == f"s3://{bucket}/pstyle/tune/s3run/pareto.png"
    _check_candidate(open_store(cfg.store), summary, tmp_path)


def test_a_failing_trial_is_retried_from_its_checkpoint(ray_local, small_model_cfg, synth_dir, tmp_path):
    from pstyle.distributed.tune import run_search

    cfg = tiny_tune_config(
        small_model_cfg,
        tmp_path / "store",
        synth_dir,
        "flaky",
        num_samples=1,
        iterations=2,
        search="random",
        fail_at_iteration=2,
    )
    (row,) = run_search(cfg, log=lambda _: None)["rows"]
    # The trial raised once at iteration 2 and was restarted from iteration 1's checkpoint.
    assert row["status"] == "terminated" and row["iterations"] == 2 and row["error"] is None
    assert row["starts"] == 2 and row["resumed_at_step"] == cfg.steps_per_iteration
    assert row["step"] == 2 * cfg.steps_per_iteration  # no step trained twice, none skipped


def _trial_actors() -> dict[str, int]:
    """{actor id: pid} of the live Tune trial actors (function trainables run in `ImplicitFunc`
    actors), from the GCS actor table: `ray.util.state` needs the dashboard, which this Ray lacks."""
    from ray._private.state import actors

    table = actors(actor_state_name="ALIVE").items()
    return {actor: info["Pid"] for actor, info in table if info["ActorClassName"] == "ImplicitFunc"}


def test_a_killed_trial_process_is_retried_and_counted_once(ray_local, small_model_cfg, synth_dir, tmp_path):
    """Fault row: a Tune trial process is killed. The first trial's actor is SIGKILLed once the trial
    has checkpointed twice; Tune retries it from its last registered checkpoint (max_failures=1), the
    search completes, and the results table has one row per trial, the killed one included once.
    (One trial actor at a time: the random search must honour max_concurrent_trials=1.)"""
    from ray.tune import ExperimentAnalysis

    from pstyle.distributed.tune import run_search
    from pstyle.store import open_store

    cfg = tiny_tune_config(
        small_model_cfg, tmp_path / "store", synth_dir, "sigkill", num_samples=2, iterations=4,
        search="random", scheduler="none", max_concurrent_trials=1,
    )  # fmt: skip
    experiment = tmp_path / "store" / "ray" / "tune" / "sigkill"
    seen: dict[str, object] = {}

    def kill_the_trial_at_its_second_checkpoint() -> None:
        # Iteration 2's checkpoint is written before its report, and the trial only got past
        # iteration 1's report once the driver had registered that checkpoint.
        deadline = time.monotonic() + 240
        while not (second := sorted(experiment.glob("trial-*/checkpoint_000001"))):
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        seen["actors"] = _trial_actors()
        (pid,) = seen["actors"].values()
        os.kill(pid, signal.SIGKILL)
        seen["at"], seen["pid"] = time.monotonic(), pid
        seen["trial"] = second[0].parent.name.removeprefix("trial-")

    killer = threading.Thread(target=kill_the_trial_at_its_second_checkpoint, daemon=True)
    killer.start()
    summary = run_search(cfg, log=lambda _: None)
    killer.join(timeout=10)
    assert "trial" in seen, seen
    killed, spi = seen["trial"], cfg.steps_per_iteration

    rows = {r["trial_id"]: r for r in summary["rows"]}
    assert len(summary["rows"]) == len(rows) == cfg.num_samples and killed in rows
    for tid, row in rows.items():  # every trial finished its budget, the killed one on its second start
        assert row["status"] == "terminated" and row["error"] is None, row
        assert row["iterations"] == cfg.iterations and row["step"] == cfg.iterations * spi, row
        assert row["starts"] == (2 if tid == killed else 1), row
    # resumed from iteration 1's or 2's checkpoint, neither from scratch nor after the kill
    assert rows[killed]["resumed_at_step"] in (spi, 2 * spi), rows[killed]
    failures = {t.trial_id: t.num_failures for t in ExperimentAnalysis(str(experiment)).trials}
    assert failures == {tid: int(tid == killed) for tid in rows}  # one retry, as FailureConfig allows
    store = open_store(cfg.store)
    table = store.get_bytes("tune/sigkill/trials.csv").decode().splitlines()
    ids = [line.split(",")[0] for line in table[1:]]
    assert sorted(ids) == sorted(rows) and ids.count(killed) == 1, table
    assert [r["trial_id"] for r in json.loads(store.get_bytes("tune/sigkill/trials.json"))] == ids
    assert _candidate(store).number == summary["version"] == 1
    print(f"killed trial {killed} (pid {seen['pid']}), resumed at step {rows[killed]['resumed_at_step']}, "
          f"search done {time.monotonic() - seen['at']:.1f} s after the kill")  # fmt: skip


def _synced_statuses(experiment: Path) -> dict[str, str]:
    """Trial statuses in the newest experiment snapshot in the store (only used to time the kill)."""
    snapshots = sorted(experiment.glob("experiment_state-*.json"))
    if not snapshots:
        return {}
    try:
        data = json.loads(snapshots[-1].read_text())
    except (json.JSONDecodeError, OSError):  # being rewritten
        return {}
    trials = [json.loads(state) for state, _ in data["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def test_a_killed_experiment_resumes_without_rerunning_finished_trials(
    ray_local, small_model_cfg, synth_dir, tmp_path
):
    """The driver (a `tune_base.py` process on the test's Ray cluster) is SIGKILLed after its first
    trial finished; running the same experiment name again restores it and finishes the rest."""
    import ray
    from ray.tune import ExperimentAnalysis

    from pstyle.distributed.tune import run_search
    from pstyle.store import open_store

    cfg = tiny_tune_config(
        small_model_cfg, tmp_path / "store", synth_dir, "killed", num_samples=3, search="random",
        scheduler="none", max_concurrent_trials=1,
    )  # fmt: skip
    cfg.save(tmp_path / "tune.yaml")
    experiment = tmp_path / "store" / "ray" / "tune" / "killed"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["TUNE_GLOBAL_CHECKPOINT_S"] = "1"  # snapshot the experiment every second
    log = tmp_path / "driver.log"
    with log.open("w") as out:
        driver = subprocess.Popen(
            [sys.executable, "ray_jobs/tune_base.py", "--config", str(tmp_path / "tune.yaml"),
             "--ray-address", ray.get_runtime_context().gcs_address],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def reports(tid: str) -> list[str]:
        path = experiment / f"trial-{tid}" / "result.json"
        return path.read_text().splitlines() if path.is_file() else []

    def synced_finished() -> set[str]:  # finished, with all its reports in the store
        done = {tid for tid, status in _synced_statuses(experiment).items() if status == "TERMINATED"}
        return {tid for tid in done if len(reports(tid)) == cfg.iterations}

    try:
        deadline = time.monotonic() + 150
        while not synced_finished():
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.2)
    finally:
        kill_session(driver.pid)
        driver.wait(timeout=30)

    before = {t.trial_id: t.status for t in ExperimentAnalysis(str(experiment)).trials}
    finished = {tid for tid, status in before.items() if status == "TERMINATED"}
    assert finished and len(finished) < cfg.num_samples, before  # killed partway
    reports_before = {tid: reports(tid) for tid in finished}

    summary = run_search(cfg, log=lambda _: None)  # resubmit with the same name
    rows = {r["trial_id"]: r for r in summary["rows"]}
    assert summary["restored"] and set(before) <= set(rows) and len(rows) == cfg.num_samples
    assert all(r["status"] == "terminated" and r["iterations"] == cfg.iterations for r in rows.values())
    for tid in finished:  # not rerun: the same reports, nothing added, never restarted
        assert reports(tid) == reports_before[tid] and len(reports_before[tid]) == cfg.iterations
        assert rows[tid]["starts"] == 1
    assert _candidate(open_store(cfg.store)).number == summary["version"]


def test_bench_counts_iterations_to_target_and_replays_asha():
    from pstyle.bench.tune import bench_config, iterations_to_target, learning_curves, replay, replay_orders

    events = [  # two trials interleaved in time; "b" is the good one
        {"wall_time": t, "trial_id": tid, "iteration": it, "score": sc}
        for t, (tid, it, sc) in enumerate(
            [("a", 1, 1.3), ("b", 1, 1.2), ("a", 2, 1.3), ("b", 2, 1.05), ("a", 3, 1.3), ("b", 3, 1.0)]
        )
    ]
    assert iterations_to_target(events, 1.05, 3) == {"iterations": 6, "trial_id": "b", "score": 1.0}
    assert iterations_to_target(events, 0.9, 3) is None
    curves = learning_curves(events)
    assert curves == {"a": [1.3, 1.3, 1.3], "b": [1.2, 1.05, 1.0]}
    assert replay(curves, ["a", "b"], 1.05, 3, None) == 6  # no early stopping: a's 3, then b's 3
    cfg = bench_config(2, 3, 1, 32, 0).with_overrides({"grace_period": 1, "reduction_factor": 2})
    from ray.tune.schedulers.async_hyperband import _Bracket

    # ASHA: b is worse than a at rung 1, so b is stopped; target never reached in this order
    assert (
        replay({"a": [1.0, 1.0, 1.0], "b": [1.2, 0.5, 0.5]}, ["a", "b"], 0.6, 3, _Bracket(1, 3, 2, 0)) is None
    )
    # a bad trial is stopped after one iteration, so the good one after it is reached sooner
    curves = {"a": [1.0, 1.0, 1.0], "b": [1.3, 1.3, 1.3], "c": [0.9, 0.9, 0.9]}
    assert replay(curves, ["a", "b", "c"], 0.9, 3, None) == 9
    assert replay(curves, ["a", "b", "c"], 0.9, 3, _Bracket(1, 3, 2, 0)) == 3 + 1 + 3
    summary = replay_orders({"a": [1.3, 1.3, 1.3], "b": [1.0, 1.0, 1.0]}, 1.0, cfg, orders=50)
    assert summary["asha_reach_rate"] == 1.0 and summary["none_mean"] >= summary["asha_mean"]


def test_bench_runs_both_policies_on_the_same_trials(ray_local, small_model_cfg, synth_dir, tmp_path):
    from pstyle.bench.tune import run_bench_tune, tune_table

    cfg = tiny_tune_config(
        small_model_cfg, tmp_path / "store", synth_dir, "bench", search="random", steps_per_iteration=1
    )
    result = run_bench_tune(cfg, log=lambda _: None)
    none, asha = result["runs"]["none"], result["runs"]["asha"]
    assert none["total_iterations"] == cfg.num_samples * cfg.iterations and none["stopped_early"] == 0
    assert asha["trials"] == cfg.num_samples and asha["total_iterations"] <= none["total_iterations"]
    assert result["best_score"] == none["best_full_score"] and none["reached"] is not None
    # the same seeded configurations train identically: a trial ASHA ran to the end scores as before
    finals = {r["train.lr_g"]: r["score"] for r in none["rows"]}
    for r in asha["rows"]:
        if r["status"] == "terminated":
            assert r["score"] == pytest.approx(finals[r["train.lr_g"]], rel=1e-6)
    expected = (
        none["total_iterations"] / asha["total_iterations"] if result["asha_search_reaches_target"] else None
    )
    assert result["search_saving"] == expected
    assert "search:" in tune_table(result) and result["replay"]["orders"] == 2000

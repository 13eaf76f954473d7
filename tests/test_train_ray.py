"""Ray Train base training on a private local Ray with 2 CPU workers: data-parallel replicas stay
identical, a killed worker resumes from the last checkpoint, a resubmitted job resumes too, and both
resumed runs end bit-identical to the uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.tiny import tiny_settings

from pstyle.bench.loopback_s3 import LOOPBACK_ENV
from pstyle.config import PStyleConfig, TrainJob
from tests.conftest import make_bucket

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 30, 5
TINY = tiny_settings(**{"model.res_blocks": 2, "model.noise_dim": 8, "model.w_dim": 64, "train.steps": STEPS,
                        "train.checkpoint_every": EVERY, "train.sample_every": 200})  # fmt: skip


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A private 2-CPU Ray for this module (never a cluster another test or user started)."""
    import ray

    with pytest.MonkeyPatch.context() as env:
        # Worker start-up can take tens of seconds on a busy 2-core machine (Ray Train's default
        # limit is 60 s); the preemption watcher is one more process per run that tests do not need.
        env.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
        env.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # The nodes hold their own S3 credentials, as IRSA or an instance role gives a cluster's:
        # pstyle ships none to the workers (S3Store.arrow_storage). moto accepts these dummies.
        for name, value in LOOPBACK_ENV.items():
            env.setenv(name, value)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield
        ray.shutdown()


@pytest.fixture(scope="module")
def config() -> PStyleConfig:
    return PStyleConfig().with_overrides(TINY)


@pytest.fixture(scope="module")
def reference(
    ray_local: None, config: PStyleConfig, synth_dir: Path, tmp_path_factory: pytest.TempPathFactory
):
    """An uninterrupted 2-worker run: the trajectory the interrupted runs must reproduce."""
    from pstyle.distributed.train import run_base_training

    tmp = tmp_path_factory.mktemp("reference")
    job = TrainJob(data=str(synth_dir), store=str(tmp / "store"), name="ref", trace_dir=str(tmp / "trace"))
    outcome = run_base_training(config, job)
    return outcome, tmp


def events(trace: Path) -> list[dict]:
    return [json.loads(line) for line in (trace / "steps.jsonl").read_text().splitlines()]


def finals(trace: Path) -> list[dict]:
    return [json.loads((trace / f"rank{r}.final.json").read_text()) for r in (0, 1)]


def latest_checkpoint_step(store, name: str) -> int | None:  # noqa: ANN001 - a Store
    """The step of the newest checkpoint Ray Train has registered for run `name`, if any."""
    from pstyle.store import KeyNotFound

    try:
        snapshot = json.loads(store.get_bytes(f"ray/train/{name}/checkpoint_manager_snapshot.json"))
    except (KeyNotFound, json.JSONDecodeError):  # not there yet, or caught mid-write
        return None
    return snapshot["latest_checkpoint_result"]["metrics"]["step"]


def wait_for_checkpoint(store, name: str, timeout: float = 120) -> int:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while (step := latest_checkpoint_step(store, name)) is None:
        assert time.monotonic() < deadline, "no checkpoint was registered"
        time.sleep(0.05)
    return step


def assert_resumed(trace: Path, at_least: int) -> int:
    """Two attempts; the second starts at a checkpoint >= `at_least`, after what the first reached,
    and trains on from the next step (nothing redone from 0). Returns the resume step."""
    log = events(trace)
    starts = [i for i, e in enumerate(log) if e["event"] == "start"]
    assert [log[i]["starts"] for i in starts] == [1, 2]
    assert log[starts[0]]["step"] == 0
    resumed = log[starts[1]]["step"]
    assert resumed % EVERY == 0 and at_least <= resumed < STEPS
    first_attempt = [e["step"] for e in log[starts[0] : starts[1]] if e["event"] == "step"]
    assert max(first_attempt) >= resumed
    second_attempt = [e["step"] for e in log[starts[1] :] if e["event"] == "step"]
    assert second_attempt == list(range(resumed + 1, STEPS + 1))
    return resumed


def test_two_workers_stay_identical_and_publish(reference, tmp_path: Path):
    from pstyle.distributed.train import publish_once
    from pstyle.store import open_store
    from pstyle.store.registry import Registry
    from pstyle.training.checkpoint import load_checkpoint

    outcome, tmp = reference
    rank0, rank1 = finals(tmp / "trace")
    assert rank0["step"] == rank1["step"] == STEPS
    assert rank0["digest"] == rank1["digest"]  # every parameter and buffer, bit for bit
    assert rank0["digest"] != rank0["initial"]  # and they trained
    assert rank0["initial"] == rank1["initial"]
    log = events(tmp / "trace")
    assert [e["step"] for e in log if e["event"] == "step"] == list(range(1, STEPS + 1))
    assert not outcome.resumed and outcome.step == STEPS and outcome.metrics["workers"] == 2

    registry = Registry(open_store(tmp / "store"))
    version = registry.resolve("base", "base", "candidate")
    assert version.number == outcome.version.number == 1
    assert version.manifest["step"] == STEPS and version.manifest["metrics"]["ray_run"] == "ref"
    fetched = registry.fetch(version, tmp_path / "fetched")
    _, meta = load_checkpoint(fetched)
    assert meta["fingerprint"] == version.manifest["fingerprint"]
    # A finished run submitted again finds the same weights published: no duplicate version.
    assert publish_once(registry, "base", fetched, {}) == (version, False)


def test_bad_arguments_fail_before_ray_starts(config, synth_dir: Path, tmp_path: Path):
    from pstyle.distributed.train import run_base_training

    with pytest.raises(ValueError, match="split evenly"):
        run_base_training(config, TrainJob(data=str(synth_dir), store=str(tmp_path), workers=3))
    with pytest.raises(ValueError, match="invalid run name"):
        TrainJob(data=str(synth_dir), name="../x")
    with pytest.raises(FileNotFoundError):
        run_base_training(config, TrainJob(data=str(tmp_path / "missing"), store=str(tmp_path)))
    with pytest.raises(ValueError, match="--data"):
        run_base_training(config, TrainJob(store=str(tmp_path)))
    with pytest.raises(ValueError, match="not both"):
        TrainJob(data=str(synth_dir), scenes=4, style_users=4)
    with pytest.raises(ValueError, match="needs content"):
        TrainJob(styles=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such image folder"):
        run_base_training(
            config, TrainJob(content=str(tmp_path / "missing"), style_users=2, store=str(tmp_path))
        )


def test_killed_worker_resumes_from_checkpoint(reference, config, synth_dir: Path, tmp_path: Path):
    from pstyle.distributed.train import run_base_training
    from pstyle.store import open_store

    store, trace, seen = open_store(tmp_path / "store"), tmp_path / "trace", {}

    def kill_rank1_after_a_checkpoint() -> None:
        seen["checkpoint"] = wait_for_checkpoint(store, "killed")
        os.kill(int((trace / "rank1.pid").read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_rank1_after_a_checkpoint, daemon=True)
    killer.start()
    job = TrainJob(data=str(synth_dir), store=str(tmp_path / "store"), name="killed", max_failures=1,
                   trace_dir=str(trace))  # fmt: skip
    outcome = run_base_training(config, job)
    killer.join(timeout=5)
    resumed = assert_resumed(trace, at_least=seen["checkpoint"])
    assert (
        outcome.step == STEPS
        and outcome.metrics["starts"] == 2
        and outcome.metrics["resumed_from"] == resumed
    )
    # Resume restores weights, optimizers and every rank's RNG streams: same result as no failure.
    assert finals(trace)[0]["digest"] == finals(reference[1] / "trace")[0]["digest"]


def test_resubmitted_job_resumes(reference, config, synth_dir: Path, tmp_path: Path, s3_env: str):
    """The job's driver (`ray_jobs/train_base.py`, joined to this module's Ray as a job driver is to
    its cluster) is killed; submitting the same name and store again (`pstyle train-base --ray`)
    resumes from the run's checkpoint in S3."""
    import ray
    from click.testing import CliRunner

    from pstyle.cli.main import cli
    from pstyle.store import open_store
    from pstyle.store.registry import Registry
    from pstyle.training.checkpoint import read_meta

    uri = f"s3://{make_bucket(s3_env)}/pstyle"
    store, trace = open_store(uri), tmp_path / "trace"
    config.save(tmp_path / "config.yaml")
    args = ["--config", str(tmp_path / "config.yaml"), "--data", str(synth_dir), "--store", uri]
    args += ["--name", "resub", "--workers", "2", "--trace-dir", str(trace)]
    address = ray.get_runtime_context().gcs_address
    job = [sys.executable, str(ROOT / "ray_jobs/train_base.py"), *args, "--ray-address", address]
    with open(tmp_path / "first-job.log", "wb") as log:
        driver = subprocess.Popen(
            job, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            checkpoint = wait_for_checkpoint(store, "resub", timeout=240)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)  # Ray then ends the actors it owned: the run's
            driver.wait(timeout=30)
    assert Registry(store).versions("base", "base") == []  # the first submission never finished

    result = CliRunner().invoke(cli, ["train-base", "--ray", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "resuming run resub" in result.output
    resumed = assert_resumed(trace, at_least=checkpoint)
    assert finals(trace)[0]["digest"] == finals(reference[1] / "trace")[0]["digest"]
    version = Registry(store).resolve("base", "base", "candidate")
    assert version.manifest["step"] == STEPS and version.manifest["metrics"]["resumed_from"] == resumed
    assert read_meta(tmp_path / "out")["fingerprint"] == version.manifest["fingerprint"]


def test_streamed_input_is_sharded_across_workers(ray_local, config, tmp_path: Path, s3_env: str):
    """Ray Data streams the input: photos from an s3:// prefix (one of them corrupt), style images
    from a folder, procedural scenes and style users. Each worker trains on its own shard of every
    epoch, never the whole set, and the replicas stay identical."""
    import boto3

    from pstyle.data.photos import PHOTOS, STYLE_ONLY, load_real_image, photo_paths
    from pstyle.distributed.train import run_base_training, warn_if_no_cpu_left_for_data
    from pstyle.images import save_image
    from pstyle.training.stream_rows import SCENE_KEY_BASE

    bucket = make_bucket(s3_env)
    s3 = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")
    for name, path in photo_paths().items():
        save_image(load_real_image(path, max_side=96), tmp_path / f"{name}.png")
        s3.upload_file(str(tmp_path / f"{name}.png"), bucket, f"photos/{name}.png")
    s3.put_object(Bucket=bucket, Key="photos/broken.jpg", Body=b"\xff\xd8 not really a jpeg")
    styles = tmp_path / "styles"
    styles.mkdir()
    for name, path in photo_paths(include_styles=True).items():
        if name in STYLE_ONLY:
            save_image(load_real_image(path, max_side=96), styles / f"{name}.png")

    scenes, style_users, steps = 10, 6, 6
    job = TrainJob(content=f"s3://{bucket}/photos", styles=str(styles), scenes=scenes,
                   style_users=style_users, store=str(tmp_path / "store"), name="streamed",
                   cpus_per_worker=0.5, trace_dir=str(tmp_path / "trace"))  # fmt: skip
    streamed = config.with_overrides({"train.steps": steps, "train.checkpoint_every": 3})
    lines: list[str] = []
    outcome = run_base_training(streamed, job, log=lines.append)
    assert not [line for line in lines if "warning" in line]  # one of the 2 CPUs is left to decode
    warn_if_no_cpu_left_for_data(TrainJob(scenes=2, style_users=2), lines.append)  # 2 workers x 1 CPU
    assert "needs at least one free CPU" in lines[-1]

    assert outcome.step == steps and outcome.version.manifest["step"] == steps
    rank0, rank1 = finals(tmp_path / "trace")
    assert rank0["digest"] == rank1["digest"] != rank0["initial"]
    trace = tmp_path / "trace"
    for dataset, total in (("content", len(PHOTOS) + scenes), ("styles", len(STYLE_ONLY) + style_users)):
        first0, first1 = (first_epoch_keys(trace, rank, dataset) for rank in (0, 1))
        assert not first0 & first1  # disjoint shards
        assert len(first0) == len(first1) == total // 2  # each worker reads half of every epoch
    photos = {k for rank in (0, 1) for k in first_epoch_keys(trace, rank, "content") if k < SCENE_KEY_BASE}
    assert len(photos) == len(PHOTOS)  # every photo was read; the corrupt file was skipped


def first_epoch_keys(trace: Path, rank: int, dataset: str) -> set[int]:
    """The row keys of `dataset` that worker `rank` trained on in its first epoch."""
    records = [json.loads(line) for line in (trace / f"rank{rank}.epochs.jsonl").read_text().splitlines()]
    return {k for r in records if r["dataset"] == dataset and r["epoch"] == 0 for k in r["keys"]}

"""infra/: manifests parse, name things that exist, and stay in sync with their sources."""

from __future__ import annotations

import re
import runpy
import shlex
from pathlib import Path

import yaml

from pstyle.distributed.runtime import HAPROXY_INGRESS_ENV

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "infra" / "kuberay"
RENDER = runpy.run_path(str(KUBERAY / "render.py"))


def test_kuberay_manifests_are_rendered_from_their_sources() -> None:
    manifests = RENDER["manifests"]()
    assert sorted(manifests) == sorted(p.name for p in KUBERAY.glob("*.yaml"))
    for name, manifest in manifests.items():
        assert (KUBERAY / name).read_text() == RENDER["render"](name, manifest), f"re-run render.py: {name}"


def test_rayservice_serves_exactly_serve_config() -> None:
    service = yaml.safe_load((KUBERAY / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService"
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == yaml.safe_load(
        (ROOT / "serve" / "config.yaml").read_text()
    )
    assert service["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    import_path = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["import_path"]
    module, _, attr = import_path.partition(":")
    assert attr in (ROOT / Path(*module.split("."))).with_suffix(".py").read_text()
    cluster = service["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:  # HAProxy in front on every pod
        env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env.items() >= HAPROXY_INGRESS_ENV.items()


def test_rayjobs_run_existing_entrypoints_on_gpu_workers() -> None:
    for path in KUBERAY.glob("rayjob-*.yaml"):
        job = yaml.safe_load(path.read_text())
        assert job["kind"] == "RayJob" and job["spec"]["shutdownAfterJobFinishes"] is True
        python, script, *_ = shlex.split(job["spec"]["entrypoint"])
        assert python == "python" and (ROOT / script).is_file(), script
        workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        limits = workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] >= 1


def test_cluster_yaml_installs_the_pinned_versions() -> None:
    cluster = yaml.safe_load((ROOT / "infra" / "cluster" / "aws-gpu.yaml").read_text())
    setup = " ".join(cluster["setup_commands"])
    assert "requirements.lock" in setup and "-e /home/ray/pstyle" in setup
    assert cluster["file_mounts"]["/home/ray/pstyle"] == "."
    assert cluster["available_node_types"]["gpu_spot"]["node_config"]["InstanceMarketOptions"]
    ray_pin = re.search(r"^ray==([\d.]+)", (ROOT / "requirements.lock").read_text(), re.M).group(1)
    assert cluster["docker"]["image"].startswith(f"rayproject/ray:{ray_pin}-")


def test_dockerfile_uses_the_lock_and_the_pinned_ray_image() -> None:
    text = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    ray_pin = re.search(r"^ray==([\d.]+)", (ROOT / "requirements.lock").read_text(), re.M).group(1)
    assert f"FROM rayproject/ray:{ray_pin}-" in text
    assert "pip install --no-cache-dir -r requirements.lock" in text


def test_feedback_loop_runs_on_a_schedule_both_ways() -> None:
    """RayCronJob (KubeRay 1.6 fields only) and the plain CronJob run the same loop entrypoint, whose
    flags `ray_jobs/retrain_from_feedback.py` accepts."""
    from pstyle.config import LoopConfig
    from pstyle.distributed.job_args import parse_job

    cron = yaml.safe_load((KUBERAY / "raycronjob-retrain-from-feedback.yaml").read_text())
    assert (cron["apiVersion"], cron["kind"]) == ("ray.io/v1", "RayCronJob")
    assert set(cron["spec"]) == {"schedule", "jobTemplate", "suspend"}  # timeZone needs KubeRay 1.7
    assert len(cron["spec"]["schedule"].split()) == 5 and cron["spec"]["suspend"] is False
    template = cron["spec"]["jobTemplate"]  # a RayJob spec, as the RayJobs have
    assert template["shutdownAfterJobFinishes"] is True and "rayClusterSpec" in template
    python, script, *flags = shlex.split(template["entrypoint"])
    assert (python, script) == ("python", "ray_jobs/retrain_from_feedback.py") and (ROOT / script).is_file()
    job, _ = parse_job(LoopConfig, argv=flags)
    assert job.store.startswith("s3://") and job.base == "base@production"

    plain = yaml.safe_load((KUBERAY / "cronjob-retrain-from-feedback.yaml").read_text())
    assert (plain["apiVersion"], plain["kind"]) == ("batch/v1", "CronJob")
    assert plain["spec"]["schedule"] == cron["spec"]["schedule"]
    assert plain["spec"]["concurrencyPolicy"] == "Forbid"  # two runs at once would train users twice
    pod = plain["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    command = pod["containers"][0]["command"][-1]
    service = yaml.safe_load((KUBERAY / "rayservice.yaml").read_text())["metadata"]["name"]
    assert command.startswith(f"ray job submit --address http://{service}-head-svc:8265 ")
    assert command.split(" -- ", 1)[1] == template["entrypoint"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]

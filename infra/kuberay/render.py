"""Write the KubeRay manifests in this folder from one cluster template and serve/config.yaml.

    python infra/kuberay/render.py          # after editing serve/config.yaml or this file

One source of truth: the RayService's `serveConfigV2` is serve/config.yaml verbatim (minus comments),
and the three RayJobs and the feedback loop's RayCronJob share one `rayClusterSpec`;
tests/test_infra.py fails when a committed manifest differs from what this script renders.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from pstyle.distributed.runtime import HAPROXY_INGRESS_ENV  # noqa: E402

IMAGE = "ghcr.io/pstyle/pstyle:latest"  # built from infra/docker/Dockerfile; the repo lives at /app
RAY_VERSION = "2.60.0"
STORE = "s3://pstyle-artifacts/pstyle"
ENV = [
    {"name": "PSTYLE_STORE", "value": STORE},
    {"name": "AWS_REGION", "value": "us-west-2"},
]  # credentials: IRSA / pod identity on the service account, never in the manifest

JOBS = {
    "tune": "python ray_jobs/tune_base.py --store {store} --name tune-base --num-samples 32 "
    "--cpus-per-trial 2 --gpus-per-trial 0.25",
    "train-base": "python ray_jobs/train_base.py --data /data/pstyle --store {store} --name train-base "
    "--workers 4 --gpu --set train.steps=20000",
    "train-adapters": "python ray_jobs/train_adapters.py --base base@production --users manifests/users.json "
    "--store {store} --workers 4",
}

# The feedback loop, on a schedule: a RayCronJob (KubeRay >= 1.6) or, for older operators, a CronJob
# whose pod submits the same entrypoint to the RayService's cluster.
LOOP = (
    "python ray_jobs/retrain_from_feedback.py --store {store} --base base@production --workers 2 "
    "--min-new-ratings 5"
)
LOOP_SCHEDULE = "0 * * * *"  # hourly, in the operator's time zone (`timeZone` needs KubeRay 1.7)
SERVICE = "pstyle"  # the RayService; KubeRay names its head's stable Service <name>-head-svc
RAY_TOKEN_SECRET = "pstyle-ray-token"  # key auth_token: the head's Ray auth token (ray_jobs/README.md)


def container(name: str, cpu: str, memory: str, gpus: int = 0) -> dict:
    limits = {"cpu": cpu, "memory": memory, **({"nvidia.com/gpu": gpus} if gpus else {})}
    return {
        "name": name,
        "image": IMAGE,
        "env": copy.deepcopy(ENV),
        "resources": {"limits": limits, "requests": {"cpu": cpu, "memory": memory}},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }


def pod(name: str, cpu: str, memory: str, gpus: int = 0) -> dict:
    return {
        "spec": {
            "serviceAccountName": "pstyle",
            "containers": [container(name, cpu, memory, gpus)],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "pstyle-data"}}],
        }
    }


def cluster_spec() -> dict:
    """A CPU head (schedules only) and an autoscaling group of 1-GPU workers."""
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "headGroupSpec": {
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": pod("ray-head", "4", "16Gi"),
        },
        "workerGroupSpecs": [
            {
                "groupName": "gpu",
                "replicas": 1,
                "minReplicas": 0,
                "maxReplicas": 8,
                "rayStartParams": {},
                "template": pod("ray-worker", "8", "32Gi", gpus=1),
            }
        ],
    }


def ray_job(name: str, entrypoint: str) -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": f"pstyle-{name}"},
        "spec": {
            "entrypoint": entrypoint.format(store=STORE),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "submissionMode": "K8sJobMode",
            "rayClusterSpec": cluster_spec(),
        },
    }


def serve_config() -> dict:
    return yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())


def ray_service() -> dict:
    """The Serve app behind Serve's HAProxy ingress on every pod (`HAPROXY_INGRESS_ENV`: calls are
    held while an Ingress replica is replaced, and one inside the dying replica is replayed when
    HAProxy can; serve/README.md says when it cannot)."""
    spec = cluster_spec()
    spec["headGroupSpec"]["rayStartParams"] = {"num-cpus": "2", "dashboard-host": "0.0.0.0"}
    haproxy = [{"name": name, "value": value} for name, value in HAPROXY_INGRESS_ENV.items()]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        group["template"]["spec"]["containers"][0]["env"] += haproxy
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "pstyle"},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config(), sort_keys=False),
            "upgradeStrategy": {"type": "NewCluster"},
            "rayClusterConfig": copy.deepcopy(spec),
        },
    }


def ray_cron_job() -> dict:
    """KubeRay >= 1.6 (alpha, behind the operator's `RayCronJob` feature gate): every tick creates a
    RayJob from `jobTemplate` (a RayJob spec), with its own cluster, deleted when the job ends."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCronJob",
        "metadata": {"name": "pstyle-retrain-from-feedback"},
        "spec": {
            "schedule": LOOP_SCHEDULE,
            "suspend": False,
            "jobTemplate": ray_job("retrain-from-feedback", LOOP)["spec"],
        },
    }


def cron_job() -> dict:
    """Any operator: a Kubernetes CronJob whose pod runs `ray job submit` against the RayService's
    head, waits for the job and exits with its status; one run at a time (`Forbid`), no pod retries
    (a resubmission is the next tick's)."""
    submit = (
        f"ray job submit --address http://{SERVICE}-head-svc:8265 "
        f"--submission-id pstyle-retrain-$(date -u +%Y%m%d-%H%M) -- {LOOP.format(store=STORE)}"
    )
    token = {"secretKeyRef": {"name": RAY_TOKEN_SECRET, "key": "auth_token"}}
    submitter = {
        "name": "submit",
        "image": IMAGE,
        "command": ["/bin/bash", "-c", submit],
        "env": [{"name": "RAY_AUTH_MODE", "value": "token"}, {"name": "RAY_AUTH_TOKEN", "valueFrom": token}],
        "resources": {
            "limits": {"cpu": "500m", "memory": "1Gi"},
            "requests": {"cpu": "500m", "memory": "1Gi"},
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "pstyle-retrain-from-feedback"},
        "spec": {
            "schedule": LOOP_SCHEDULE,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 600,
            "jobTemplate": {
                "spec": {
                    "backoffLimit": 0,
                    "template": {"spec": {"restartPolicy": "Never", "containers": [submitter]}},
                }
            },
        },
    }


def manifests() -> dict[str, dict]:
    out = {f"rayjob-{name}.yaml": ray_job(name, entrypoint) for name, entrypoint in JOBS.items()}
    out["rayservice.yaml"] = ray_service()
    out["raycronjob-retrain-from-feedback.yaml"] = ray_cron_job()
    out["cronjob-retrain-from-feedback.yaml"] = cron_job()
    return out


def render(name: str, manifest: dict) -> str:
    header = "# Generated by infra/kuberay/render.py: edit that (or serve/config.yaml), then re-run it.\n"
    return header + yaml.safe_dump(manifest, sort_keys=False, width=100)


if __name__ == "__main__":
    for file_name, manifest in manifests().items():
        (HERE / file_name).write_text(render(file_name, manifest))
        print(f"wrote infra/kuberay/{file_name}")

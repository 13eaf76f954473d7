"""Fine-tuning many users' adapters in one Ray Train job: `pstyle personalize --ray` and
`ray_jobs/train_adapters.py`. Ray is imported inside functions only.

A job takes a *user manifest* (which users, which style images, which rated outputs) and the frozen
base named by `NAME[@alias|version]` in the registry. The driver resolves the base to one version
(so an alias moving mid-job cannot mix bases), checks the manifest, and starts `workers` Ray Train
workers; worker r takes users[r::workers] (sorted), fetches the base once, loads each user's images
from the store and trains its users in groups of `group_size` (`GroupPersonalizer`: one batched
forward per step for the whole group). Every finished adapter is published from the worker to the
registry as a new version of that user with before/after metrics and the alias `candidate`, so
adapters never travel back through the driver. A user whose data is bad (no valid style images,
too few, an invalid id, a malformed entry) is skipped with the reason; a group whose training
raises is marked failed; neither stops the other users.

Each user's outcome is a small JSON record in the store (`jobs/adapters/<job>/users/<user>.json`),
written by the worker that trained it. That is how per-user results reach the driver (Ray Train
only keeps rank 0's reported metrics) and what makes the job resumable: a worker restarted by
`max_failures`, or the same job name submitted again, skips users whose record exists. A worker
killed between a publish and its record write left a version without a record: the resumed attempt
finds that version (the user's latest, published by this job) and records it instead of training and
publishing the user again. The driver writes the job summary to `jobs/adapters/<job>/summary.json`
(and optionally a local file).

Why Ray Train rather than plain tasks: the users are independent (no gradients are exchanged), so
tasks would do; `TorchTrainer` gives the same gang-scheduled worker group, failure handling and run
storage in the store as the base-training job (`pstyle.distributed.train`), one set of operational tools
for both. The process group it sets up is unused.

Manifest (JSON or YAML; keys are store keys; ratings 1-5, "up" or "down"):

    {"format": "pstyle-users/1",
     "users": {"alice": {"styles": ["users/alice/styles/0a1b....png", ...],
                         "feedback": [{"image": "users/alice/feedback/....png", "rating": 5}]}}}

`load_manifest` accepts a store key, a local manifest file, or a local folder of users
(`<dir>/<user>/*.png`, optional `<dir>/<user>/feedback.json` in `Feedback.load`'s format), which it
uploads into the store as `users/<user>/...` plus `manifests/<dir name>.json`.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from pstyle.adapters.personalize import (
    Feedback,
    ForwardMode,
    GroupPersonalizer,
)
from pstyle.config import AdapterJobConfig, PersonalizeConfig
from pstyle.data.splits import holdout_split
from pstyle.distributed.runtime import ensure_ray
from pstyle.ids import validate_id
from pstyle.images import ImageError, list_images, open_image, to_tensor
from pstyle.ratings import parse_rating, rating_weight
from pstyle.store import KeyNotFound, Store, check_key, open_store
from pstyle.store.layout import ADAPTER_JOBS_PREFIX, adapter_progress_key, adapter_record_key
from pstyle.store.registry import CANDIDATE_ALIAS, parse_ref

if TYPE_CHECKING:
    from pstyle.store.registry import Registry, Version

MANIFEST_FORMAT = "pstyle-users/1"
MANIFEST_PREFIX = "manifests"
STORAGE_PREFIX = "ray/adapters"  # Ray Train's run storage

Log = Callable[[str], None]


class UserDataError(ValueError):
    """A user's manifest entry or images cannot be trained on: the user is skipped, the job goes on."""


# ------------------------------------------------------------------------------------------ manifest


def parse_manifest(data: Any) -> dict[str, Any]:
    """The `users` mapping of a manifest. Only the overall shape is checked here: a bad user id or
    entry is that user's problem, reported when the job runs, not a reason to refuse the manifest."""
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict) or not users:
        raise ValueError('a user manifest needs a non-empty "users" mapping of user id -> entry')
    return {str(user): entry for user, entry in users.items()}


def check_entry(user: str, entry: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """(style keys, feedback rows) of a manifest entry, or UserDataError saying what is wrong."""
    try:
        validate_id(user)
    except ValueError as exc:
        raise UserDataError(str(exc)) from None
    styles = entry.get("styles") if isinstance(entry, dict) else None
    if not isinstance(styles, list) or not all(isinstance(k, str) for k in styles):
        raise UserDataError('entry needs "styles": a list of store keys')
    feedback = entry.get("feedback") or []
    if not isinstance(feedback, list) or not all(isinstance(row, dict) for row in feedback):
        raise UserDataError('"feedback" must be a list of {"image": key, "rating": r}')
    return styles, feedback


def build_manifest(store: Store, folder: Path, name: str | None = None) -> str:
    """Upload a folder of users (`<folder>/<user>/*.png`, optional `feedback.json`) into the store and
    write its manifest; returns the manifest's key. Images are stored under content hashes, so
    uploading the same folder twice stores nothing new. Unreadable files are uploaded as they are:
    the job, not the upload, decides what is usable (and reports it)."""
    folder = Path(folder)
    name = validate_id(name or folder.resolve().name, "manifest name")
    users: dict[str, Any] = {}
    for user_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        user = user_dir.name
        try:
            validate_id(user)
        except ValueError:
            users[user] = {"styles": []}  # reported as an invalid id by the job
            continue
        entry: dict[str, Any] = {
            "styles": [_upload(store, f"users/{user}/styles", p) for p in list_images(user_dir)]
        }
        ratings = next(
            (p for p in (user_dir / "feedback.json", user_dir / "feedback.jsonl") if p.is_file()), None
        )
        if ratings is not None:
            entry["feedback"] = [
                {
                    "image": _upload(store, f"users/{user}/feedback", ratings.parent / row["image"]),
                    "rating": row["rating"],
                }
                for row in _read_rows(ratings)
            ]
        users[user] = entry
    if not users:
        raise ValueError(f"{folder}: no user folders (<user>/*.png)")
    return save_manifest(store, name, users)


def save_manifest(store: Store, name: str, users: dict[str, Any]) -> str:
    """Write a manifest of `users` ({user: entry}) under `name`; returns its store key."""
    key = f"{MANIFEST_PREFIX}/{validate_id(name, 'manifest name')}.json"
    store.put_bytes(key, json.dumps({"format": MANIFEST_FORMAT, "users": users}, indent=1).encode())
    return key


def load_manifest(store: Store, ref: str | Path) -> tuple[str, dict[str, Any]]:
    """(where it came from, users) for a local folder of users (uploaded first), a local JSON/YAML
    manifest file, or the key of a manifest in the store."""
    path = Path(ref)
    if path.is_dir():
        key = build_manifest(store, path)
        return key, parse_manifest(json.loads(store.get_bytes(key)))
    if path.is_file():
        return str(path), parse_manifest(yaml.safe_load(path.read_text()))  # JSON is YAML
    try:
        data = store.get_bytes(check_key(str(ref)))
    except (KeyNotFound, ValueError):
        raise FileNotFoundError(
            f"{ref}: not a folder, a manifest file, or a manifest key in {store.uri}"
        ) from None
    return str(ref), parse_manifest(yaml.safe_load(data))


def _upload(store: Store, prefix: str, path: Path) -> str:
    data = Path(path).read_bytes()
    suffix = "".join(c for c in Path(path).suffix.lower() if c.isalnum() or c == ".")
    key = f"{prefix}/{hashlib.sha256(data).hexdigest()[:20]}{suffix}"
    if not store.exists(key):
        store.put_bytes(key, data)
    return key


def _read_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    rows = (
        json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x]
    )
    if not all(isinstance(r, dict) and "image" in r and "rating" in r for r in rows):
        raise ValueError(f"{path}: entries need an image and a rating")
    return rows


# --------------------------------------------------------------------------------------- user data


@dataclass
class UserData:
    styles: torch.Tensor  # (K, 3, S, S), the valid style images
    feedback: Feedback | None
    bad_images: list[str]  # "key: reason" for every style or feedback image that could not be used

    def to(self, device: torch.device | str) -> UserData:
        fb = self.feedback
        feedback = None if fb is None else Feedback(fb.images.to(device), fb.weights.to(device))
        return UserData(self.styles.to(device), feedback, self.bad_images)


def load_user_data(store: Store, user: str, entry: Any, size: int, holdout: int) -> UserData:
    """A user's valid style images and feedback from the store; UserDataError when they cannot train
    (no valid style images, or no more than `holdout`, which evaluation keeps out of training)."""
    style_keys, feedback_rows = check_entry(user, entry)
    bad: list[str] = []
    styles = [t for t in (_load(store, key, size, bad) for key in style_keys) if t is not None]
    if not styles:
        detail = f" ({len(bad)} unusable: {'; '.join(bad[:3])})" if bad else ""
        raise UserDataError(f"no valid style images{detail}")
    if len(styles) <= holdout:
        raise UserDataError(f"needs more than {holdout} valid style images, has {len(styles)}")
    images, weights = [], []
    for row in feedback_rows:
        rating = parse_rating(row.get("rating"))
        if rating is None or not isinstance(row.get("image"), str):
            bad.append(f"feedback {row!r}: needs an image key and a rating 1-5, 'up' or 'down'")
            continue
        image = _load(store, row["image"], size, bad)
        if image is not None:
            images.append(image)
            weights.append(rating_weight(rating))
    feedback = Feedback(torch.stack(images), torch.tensor(weights)) if images else None
    return UserData(torch.stack(styles), feedback, bad)


def user_split(
    store: Store, manifest: str, user: str, size: int, cfg: PersonalizeConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) style images of `user` exactly as a job over `manifest` split them (the
    manifest's image order, `cfg`'s holdout and seed): to check an adapter on images it never saw."""
    cfg = cfg or PersonalizeConfig()
    _, entries = load_manifest(store, manifest)
    if user not in entries:
        raise UserDataError(f"user {user!r} is not in manifest {manifest}")
    data = load_user_data(store, user, entries[user], size, cfg.holdout)
    return holdout_split(data.styles, user, cfg.holdout, cfg.seed)


def _load(store: Store, key: str, size: int, bad: list[str]) -> torch.Tensor | None:
    try:
        return to_tensor(open_image(store.get_bytes(check_key(key)), name=key), size)
    except ImageError as exc:
        bad.append(str(exc))
    except (KeyNotFound, ValueError):
        bad.append(f"{key}: not in the store")
    return None


# ------------------------------------------------------------------------------------------ worker


@dataclass
class AdapterJob:
    """Everything a worker needs (plain data: it travels in the Ray Train loop config)."""

    name: str
    store: str
    base_name: str
    base_version: int
    personalize: dict[str, Any] = field(default_factory=lambda: PersonalizeConfig().to_dict())
    group_size: int = 2  # users per batched forward (`pstyle bench adapters-train` compares sizes)
    forward: ForwardMode = "grouped"
    n_content: int = AdapterJobConfig.n_content  # procedural content scenes each adapter trains on

    def __post_init__(self) -> None:
        validate_id(self.name, "job name")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")

    def record_key(self, user: str) -> str:
        return adapter_record_key(self.name, user)


def fetch_base(store: Store, name: str, version: int) -> Path:
    """The job's base checkpoint, fetched once per machine (see `Registry.fetch_cached`)."""
    from pstyle.store.registry import Registry

    registry = Registry(store)
    return registry.fetch_cached(registry.get("base", name, version))


def train_users(
    job: AdapterJob,
    entries: dict[str, Any],
    worker: int = 0,
    log: Log = print,
    device: torch.device | str = "cpu",
) -> dict[str, dict]:
    """Train, publish and record `entries`' users (the body of one worker; also runs without Ray)
    on `device` (a Ray Train worker passes the one Ray assigned it).

    Returns {user: record}; users with a record from an earlier attempt are not trained again."""
    from pstyle.config import PStyleConfig
    from pstyle.data.synth import scene_tensors
    from pstyle.store.registry import Registry
    from pstyle.training.checkpoint import load_checkpoint

    store = open_store(job.store)
    cfg = PersonalizeConfig.from_dict(job.personalize)
    records: dict[str, dict] = {}
    todo = []
    for user in sorted(entries):
        previous = _read_record(store, job, user)
        if previous is not None:
            records[user] = {**previous, "resumed": True}
        else:
            todo.append(user)
    if not todo:
        return records
    base, meta = load_checkpoint(fetch_base(store, job.base_name, job.base_version), device)
    base_config = PStyleConfig.from_dict(meta["config"])
    size = base_config.train.image_size
    content = scene_tensors(job.n_content, size).to(device)
    data: dict[str, UserData] = {}
    for user in todo:
        try:
            data[user] = load_user_data(store, user, entries[user], size, cfg.holdout).to(device)
        except UserDataError as exc:
            records[user] = _write_record(store, job, user, {"status": "skipped", "reason": str(exc)})
            log(f"[worker {worker}] skipped {user}: {exc}")
    registry = Registry(store)
    ready = []
    for user in sorted(data):
        version = _published_by(registry, job, user)
        if version is None:
            ready.append(user)
            continue
        record = {"status": "published", "version": version.number, "worker": worker, "recovered": True}
        records[user] = _write_record(store, job, user, {**record, **version.manifest["metrics"]})
        log(f"[worker {worker}] {user}: v{version.number} was published before a restart; recorded it")
    for start in range(0, len(ready), job.group_size):
        group = ready[start : start + job.group_size]
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            personalizer = GroupPersonalizer(base, base_config, cfg, group, forward=job.forward)
            metrics = personalizer.fit_users(
                content,
                {u: data[u].styles for u in group},
                {u: data[u].feedback for u in group},
                progress=False,
                on_eval=partial(_write_progress, store, job, group),
            )
        except Exception as exc:  # one group's failure (a diverged fit, OOM...) must not fail the others
            for user in group:
                reason = f"training failed: {type(exc).__name__}: {exc}"
                records[user] = _write_record(store, job, user, {"status": "failed", "reason": reason})
            log(f"[worker {worker}] group {group} failed: {exc!r}")
            continue
        seconds = (time.perf_counter() - started) / len(group)
        cpu_seconds = (time.process_time() - cpu_started) / len(group)  # all threads; robust to contention
        for user in group:
            m = metrics[user]
            info = {**m, "improved": m["after"]["style"] < m["before"]["style"], "seconds": seconds,
                    "cpu_seconds": cpu_seconds, "base": f"{job.base_name}@{job.base_version}",
                    "job": job.name}  # fmt: skip
            with tempfile.TemporaryDirectory(prefix="pstyle-adapter-") as tmp:
                personalizer.save_user(user, Path(tmp), info, version=job.name)
                parent = registry.versions("adapter", user)
                version = registry.publish_adapter(
                    user,
                    Path(tmp),
                    metrics=info,
                    parent=parent[-1] if parent else None,
                    aliases=[CANDIDATE_ALIAS],
                )
            record = {
                "status": "published",
                "version": version.number,
                "worker": worker,
                "group": group,
                **info,
            }
            records[user] = _write_record(store, job, user, record)
            log(
                f"[worker {worker}] {user}: style {m['before']['style']:.2f} -> {m['after']['style']:.2f}, "
                f"SWD {m['before']['swd']:.1f} -> {m['after']['swd']:.1f}, "
                f"published v{version.number} ({seconds:.0f} s)"
            )
    return records


def _published_by(registry: Registry, job: AdapterJob, user: str) -> Version | None:
    """The user's latest version when this job published it, with its `candidate` alias restored if
    the publish was cut short before it: a worker killed after publishing but before writing the
    record must not make a resumed attempt publish the user twice."""
    numbers = registry.versions("adapter", user)
    if not numbers:
        return None
    version = registry.get("adapter", user, numbers[-1])
    metrics = version.manifest.get("metrics", {})
    if metrics.get("job") != job.name or metrics.get("base") != f"{job.base_name}@{job.base_version}":
        return None
    if registry.aliases("adapter", user).get(CANDIDATE_ALIAS) != version.number:
        registry.set_alias("adapter", user, CANDIDATE_ALIAS, version.number)
    return version


def _read_record(store: Store, job: AdapterJob, user: str) -> dict | None:
    try:
        return json.loads(store.get_bytes(job.record_key(user)))
    except KeyNotFound:
        return None


def _write_progress(store: Store, job: AdapterJob, users: list[str], step: int, total: int) -> None:
    for user in users:
        progress = json.dumps({"step": step, "total": total}).encode()
        store.put_bytes(adapter_progress_key(job.name, user), progress)


def _write_record(store: Store, job: AdapterJob, user: str, record: dict) -> dict:
    record = {"user": user, **record}
    store.put_bytes(job.record_key(user), json.dumps(record).encode())
    return record


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: users[rank::world] of the job, `threads` torch threads, on the device
    Ray Train assigned (its GPU when the job asked for GPUs, else the CPU)."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(int(loop_config["threads"]))
    job = AdapterJob(**loop_config["job"])
    users = sorted(loop_config["users"])[rank::world]
    entries = {u: loop_config["users"][u] for u in users}
    records = train_users(job, entries, worker=rank, device=ray.train.torch.get_device())
    published = sum(r["status"] == "published" for r in records.values())
    ray.train.report({"rank": rank, "users": len(records), "published": published})


# ------------------------------------------------------------------------------------------ driver


def run_adapter_job(
    spec: AdapterJobConfig, personalize: PersonalizeConfig | None = None, log: Log = print
) -> dict[str, Any]:
    """Fine-tune and publish the adapters of every user in the manifest `spec.users` (see
    `load_manifest`) on base `spec.base` ("NAME[@alias|version]"), on `spec.workers` Ray Train
    workers, with the recipe `personalize`; returns the summary.

    Submitting the same name again resumes: users already recorded are not trained again."""
    from pstyle.store.registry import Registry

    if not spec.users:
        raise ValueError("an adapter job needs --users (a manifest or a folder of users)")
    workers, cpus_per_worker = spec.workers, spec.cpus_per_worker
    store_obj = open_store(spec.store)
    base_name, ref = parse_ref(spec.base)
    version = Registry(store_obj).resolve("base", base_name, ref)
    source, entries = load_manifest(store_obj, spec.users)
    job = AdapterJob(
        name=spec.name or time.strftime("adapters-%Y%m%d-%H%M%S"),
        store=store_obj.uri,
        base_name=base_name,
        base_version=version.number,
        personalize=(personalize or PersonalizeConfig()).to_dict(),
        group_size=spec.group_size,
        forward=spec.forward,
        n_content=spec.n_content,
    )
    records: dict[str, dict] = {}
    trainable = {}
    for user, entry in entries.items():
        try:
            check_entry(user, entry)
            trainable[user] = entry
        except UserDataError as exc:  # no valid id: nowhere to record it but the summary
            records[user] = {"user": user, "status": "skipped", "reason": str(exc)}
    log(f"job {job.name}: {len(trainable)} users on base {base_name} v{version.number}, {workers} workers")
    started = time.perf_counter()
    gpus_per_worker = 0.0
    if trainable:
        workers_used = min(workers, len(trainable))
        gpus_per_worker = _fit_on_ray(job, trainable, workers_used, spec, log)
    wall = time.perf_counter() - started
    for user in trainable:
        record = _read_record(store_obj, job, user)
        records[user] = record or {
            "user": user,
            "status": "failed",
            "reason": "no result: the worker was lost",
        }
    summary = summarize(job, source, records, wall, workers, cpus_per_worker, gpus_per_worker)
    summary_key = f"{ADAPTER_JOBS_PREFIX}/{job.name}/summary.json"
    store_obj.put_bytes(summary_key, json.dumps(summary, indent=1).encode())
    if spec.summary is not None:
        Path(spec.summary).write_text(json.dumps(summary, indent=1))
    log(format_summary(summary))
    return summary


def worker_resources(workers: int, cpus: float, gpus: float | None, cluster_gpus: float) -> dict[str, float]:
    """Ray Train's `resources_per_worker` for an adapter job (`use_gpu` is whether it holds a "GPU").

    `gpus` None means: what the cluster has. One GPU per worker, as `use_gpu=True` asks, when there
    are as many GPUs as workers; with fewer, equal shares of 1/k that pack k workers on each GPU (a
    job asking for more whole GPUs than exist would wait forever); none on a CPU-only cluster. A
    cluster whose GPU nodes autoscale from zero shows no GPUs yet: ask for them explicitly there."""
    if gpus is None:
        whole = int(cluster_gpus)
        gpus = 0.0 if whole == 0 else 1.0 / math.ceil(workers / whole)
    gpus = math.floor(gpus * 10_000) / 10_000  # Ray's precision for fractional resources
    return {"CPU": cpus, "GPU": gpus} if gpus > 0 else {"CPU": cpus}


def _fit_on_ray(
    job: AdapterJob, entries: dict[str, Any], workers: int, spec: AdapterJobConfig, log: Log
) -> float:
    """Run the job's Ray Train workers; returns the GPUs each worker held."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ensure_ray(spec.ray_address)
    resources = worker_resources(
        workers, spec.cpus_per_worker, spec.gpus_per_worker, ray.cluster_resources().get("GPU", 0)
    )
    log(f"job {job.name}: {workers} workers with {resources} each")
    storage_path, filesystem = open_store(job.store).arrow_storage(STORAGE_PREFIX)
    threads = max(1, int(spec.cpus_per_worker))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": asdict(job), "users": entries, "threads": threads},
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu="GPU" in resources, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=job.name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=spec.max_failures),
        ),
    )
    trainer.fit()
    return resources.get("GPU", 0.0)


def summarize(
    job: AdapterJob,
    source: str,
    records: dict[str, dict],
    wall: float,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
) -> dict[str, Any]:
    by_status: dict[str, list[str]] = {"published": [], "skipped": [], "failed": []}
    for user, record in sorted(records.items()):
        by_status.setdefault(record["status"], []).append(user)
    trained = len(by_status["published"])
    return {
        "job": job.name,
        "manifest": source,
        "base": {"name": job.base_name, "version": job.base_version},
        "workers": workers,
        "cpus_per_worker": cpus_per_worker,
        "gpus_per_worker": gpus_per_worker,
        "group_size": job.group_size,
        "forward": job.forward,
        "wall_seconds": wall,
        "users_per_hour": 3600 * trained / wall if trained and wall > 0 else 0.0,
        **by_status,
        "users": dict(sorted(records.items())),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """One line per user: before/after held-out style distance and SWD, the version published, or why not."""
    lines = [
        f"job {summary['job']}: {len(summary['published'])} published, {len(summary['skipped'])} skipped, "
        f"{len(summary['failed'])} failed in {summary['wall_seconds']:.0f} s",
        f"{'user':<20}{'status':<11}{'style base':>11}{'adapter':>9}{'SWD base':>9}{'adapter':>9}"
        f"{'version':>9}{'s/user':>8}  reason",
    ]
    for user, r in summary["users"].items():
        if r["status"] == "published":
            lines.append(
                f"{user:<20}{r['status']:<11}{r['before']['style']:>11.2f}{r['after']['style']:>9.2f}"
                f"{r['before']['swd']:>9.1f}{r['after']['swd']:>9.1f}{'v' + str(r['version']):>9}"
                f"{r['seconds']:>8.0f}"
            )
        else:
            lines.append(f"{user:<20}{r['status']:<11}{'':>55}  {r['reason']}")
    return "\n".join(lines)

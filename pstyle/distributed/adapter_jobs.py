"""Fine-tuning many users' adapters in one Ray Data job: `pstyle personalize --ray` and
`ray_jobs/train_adapters.py`. Ray is imported inside functions only.

A job takes a *user manifest* (which users, which style images, which rated outputs) and the frozen
base named by `NAME[@alias|version]` in the registry. The driver resolves the base to one version
(so an alias moving mid-job cannot mix bases), checks the manifest, drops the users that already
have a record, and streams the rest as a dataset of user rows through `map_batches` on a pool of
`workers` `UserTrainer` actors (`num_cpus`/`num_gpus` each; fractional GPU shares when the cluster
has fewer GPUs than actors). Each actor fetches and loads the base once, then takes batches of
`group_size` users and trains each batch together (`GroupPersonalizer`: one batched forward per
step for the whole group). Every finished adapter is published from the actor to the registry as a
new version of that user with before/after metrics and the alias `candidate`, so adapters never
travel back through the driver; what comes back is each user's small record. A user whose data is
bad (no valid style images, too few, an invalid id, a malformed entry) is skipped with the reason;
a user whose training raises is retried alone up to `user_retries` times, then failed with the
reason; neither stops the other users.

Each user's outcome is a JSON record in the store (`jobs/adapters/<job>/users/<user>.json`),
written by the actor that trained it: that is what makes the job resumable. The same job name
submitted again skips users with a record. An actor that dies is restarted by Ray Data (its actor
pool runs with `max_restarts=-1`, `max_task_retries=-1`) and the batch it held is redone; the redo
skips the users of that batch who were recorded, and records instead of retraining a user whose
version was published before the record was written (its latest version, published by this job).
Tries are counted in the user's progress record before they start, so a user whose training kills
its actor every time ends as failed after `user_retries` retries instead of looping. The driver
logs users done / total and keeps `jobs/adapters/<job>/progress.json` up to date, then writes
the job summary to `jobs/adapters/<job>/summary.json` (and optionally a local file).

Why Ray Data rather than Ray Train: users are independent (no gradients are exchanged) and uneven
(image counts, early stopping, a slow node), and a job has thousands of them. Ray Train gang-schedules
a fixed group that splits the users statically, so the slowest worker's share sets the wall time,
one dead worker restarts the whole group, and its process group goes unused. A Ray Data pipeline
hands the next batch of users to whichever actor is free, keeps each actor's loaded base across
batches, restarts only the actor that died and redoes only its batch, and streams records back to
the driver as they finish, which is the job's progress.

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
import os
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
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
from pstyle.store.layout import (
    ADAPTER_JOBS_PREFIX,
    adapter_job_progress_key,
    adapter_progress_key,
    adapter_record_key,
    adapter_records_prefix,
)
from pstyle.store.registry import CANDIDATE_ALIAS, parse_ref

if TYPE_CHECKING:
    from pstyle.store.registry import Registry, Version

MANIFEST_FORMAT = "pstyle-users/1"
MANIFEST_PREFIX = "manifests"

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
    """Everything an actor needs (plain data: it travels to every Ray Data actor)."""

    name: str
    store: str
    base_name: str
    base_version: int
    personalize: dict[str, Any] = field(default_factory=lambda: PersonalizeConfig().to_dict())
    group_size: int = 2  # users per batched forward (`pstyle bench adapters-train` compares sizes)
    forward: ForwardMode = "grouped"
    n_content: int = AdapterJobConfig.n_content  # procedural content scenes each adapter trains on
    user_retries: int = AdapterJobConfig.user_retries  # tries of a user after its first, then failed

    def __post_init__(self) -> None:
        validate_id(self.name, "job name")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.user_retries < 0:
            raise ValueError(f"user_retries must be >= 0, got {self.user_retries}")

    def record_key(self, user: str) -> str:
        return adapter_record_key(self.name, user)


def fetch_base(store: Store, name: str, version: int) -> Path:
    """The job's base checkpoint, fetched once per machine (see `Registry.fetch_cached`)."""
    from pstyle.store.registry import Registry

    registry = Registry(store)
    return registry.fetch_cached(registry.get("base", name, version))


class UserTrainer:
    """Trains, publishes and records the users of one job on `device`. The frozen base is fetched and
    loaded once, here: a Ray Data actor builds one and calls it on batch after batch of user rows
    (`__call__`); without Ray, `UserTrainer(job).train(entries)`.

    Each user is idempotent: one with a record is not trained again; one this job published but did
    not record (its actor died in between) is recorded, not retrained. A try that raises is retried
    up to `job.user_retries` times, alone (a group's failure does not say whose it was), then the
    user is recorded as failed with the last reason. Tries are counted in the user's progress record
    before they start, so a user whose training kills its actor each time (Ray Data restarts the
    actor and redoes the batch) also runs out of tries instead of looping; a user with an earlier
    try trains alone, so it cannot take other users down with it twice."""

    def __init__(
        self,
        job: AdapterJob,
        device: torch.device | str = "cpu",
        threads: int | None = None,
        log: Log = print,
    ) -> None:
        from pstyle.config import PStyleConfig
        from pstyle.data.synth import scene_tensors
        from pstyle.store.registry import Registry
        from pstyle.training.checkpoint import load_checkpoint

        if threads is not None:
            torch.set_num_threads(threads)
        self.job, self.device, self.log = job, torch.device(device), log
        self.worker = f"{socket.gethostname()}:{os.getpid()}"  # a restarted actor is a new process
        self.store = open_store(job.store)
        self.registry = Registry(self.store)
        self.cfg = PersonalizeConfig.from_dict(job.personalize)
        checkpoint = fetch_base(self.store, job.base_name, job.base_version)
        self.base, meta = load_checkpoint(checkpoint, self.device)
        self.base_config = PStyleConfig.from_dict(meta["config"])
        self.size = self.base_config.train.image_size
        self.content = scene_tensors(job.n_content, self.size).to(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        """Ray Data's call: user rows {"user", "entry" (JSON)} -> their records {"user", "record" (JSON)}."""
        entries = {str(u): json.loads(e) for u, e in zip(batch["user"], batch["entry"], strict=True)}
        records = self.train(entries)
        return {"user": list(records), "record": [json.dumps(r) for r in records.values()]}

    def train(self, entries: dict[str, Any]) -> dict[str, dict]:
        """Train, publish and record `entries`' users in groups of `job.group_size`; returns
        {user: record}, with "resumed" on the records found from an earlier run."""
        records: dict[str, dict] = {}
        attempts: dict[str, int] = {}
        for user in sorted(entries):
            previous = _read_record(self.store, self.job, user)
            if previous is not None:
                records[user] = {**previous, "resumed": True}
            else:
                attempts[user] = _read_attempts(self.store, self.job, user)
        fresh, size = [u for u, n in attempts.items() if n == 0], self.job.group_size
        queue = deque(fresh[i : i + size] for i in range(0, len(fresh), size))
        queue.extend([u] for u, n in attempts.items() if n > 0)
        reasons: dict[str, str] = {}  # why each user's last try failed
        while queue:
            group = []
            for user in queue.popleft():
                if attempts[user] > 0 and self._recover(user, records):
                    continue
                if attempts[user] > self.job.user_retries:
                    reason = reasons.get(
                        user, "no tries left: they started and never ended (its actor died?)"
                    )
                    failed = {"status": "failed", "reason": reason, "attempts": attempts[user]}
                    records[user] = self._record(user, failed)
                    self.log(f"[{self.worker}] {user} failed after {attempts[user]} tries: {reason}")
                    continue
                group.append(user)
            if not group:
                continue
            for user in group:
                attempts[user] += 1
            _write_progress(self.store, self.job, {u: attempts[u] for u in group}, 0, self.cfg.steps)
            try:
                self._train_group(group, entries, attempts, records)
            except Exception as exc:  # a diverged fit, OOM, a store error...: retried alone
                self.log(f"[{self.worker}] group {group} failed: {exc!r}")
                for user in group:
                    if user not in records:
                        reasons[user] = f"training failed: {type(exc).__name__}: {exc}"
                        queue.append([user])
        return records

    def _train_group(
        self, group: list[str], entries: dict[str, Any], attempts: dict[str, int], records: dict[str, dict]
    ) -> None:
        """One try: load the users' images, fit them together, publish and record each; raises on
        failure (users it recorded before that keep their records)."""
        data: dict[str, UserData] = {}
        for user in group:
            try:
                user_data = load_user_data(self.store, user, entries[user], self.size, self.cfg.holdout)
                data[user] = user_data.to(self.device)
            except UserDataError as exc:  # bad data stays bad: skipped, not retried
                records[user] = self._record(user, {"status": "skipped", "reason": str(exc)})
                self.log(f"[{self.worker}] skipped {user}: {exc}")
        ready = sorted(data)
        if not ready:
            return
        started, cpu_started = time.perf_counter(), time.process_time()
        personalizer = GroupPersonalizer(
            self.base, self.base_config, self.cfg, ready, forward=self.job.forward
        )
        metrics = personalizer.fit_users(
            self.content,
            {u: data[u].styles for u in ready},
            {u: data[u].feedback for u in ready},
            progress=False,
            on_eval=partial(_write_progress, self.store, self.job, {u: attempts[u] for u in ready}),
        )
        seconds = (time.perf_counter() - started) / len(ready)
        cpu_seconds = (time.process_time() - cpu_started) / len(ready)  # all threads; robust to contention
        for user in ready:
            m = metrics[user]
            info = {**m, "improved": m["after"]["style"] < m["before"]["style"], "seconds": seconds,
                    "cpu_seconds": cpu_seconds, "base": f"{self.job.base_name}@{self.job.base_version}",
                    "job": self.job.name}  # fmt: skip
            with tempfile.TemporaryDirectory(prefix="pstyle-adapter-") as tmp:
                personalizer.save_user(user, Path(tmp), info, version=self.job.name)
                parent = self.registry.versions("adapter", user)
                version = self.registry.publish_adapter(
                    user,
                    Path(tmp),
                    metrics=info,
                    parent=parent[-1] if parent else None,
                    aliases=[CANDIDATE_ALIAS],
                )
            record = {"status": "published", "version": version.number, "worker": self.worker,
                      "group": ready, "attempts": attempts[user], **info}  # fmt: skip
            records[user] = self._record(user, record)
            self.log(
                f"[{self.worker}] {user}: style {m['before']['style']:.2f} -> {m['after']['style']:.2f}, "
                f"SWD {m['before']['swd']:.1f} -> {m['after']['swd']:.1f}, "
                f"published v{version.number} ({seconds:.0f} s)"
            )

    def _recover(self, user: str, records: dict[str, dict]) -> bool:
        """Record the user's version if this job published it before an earlier try ended."""
        version = _published_by(self.registry, self.job, user)
        if version is None:
            return False
        record = {"status": "published", "version": version.number, "worker": self.worker, "recovered": True}
        records[user] = self._record(user, {**record, **version.manifest["metrics"]})
        self.log(f"[{self.worker}] {user}: v{version.number} was published by an earlier try; recorded it")
        return True

    def _record(self, user: str, record: dict) -> dict:
        record = {"user": user, **record}
        self.store.put_bytes(self.job.record_key(user), json.dumps(record).encode())
        return record


def _published_by(registry: Registry, job: AdapterJob, user: str) -> Version | None:
    """The user's latest version when this job published it, with its `candidate` alias restored if
    the publish was cut short before it: an actor killed after publishing but before writing the
    record must not make the redone batch publish the user twice."""
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


def _read_attempts(store: Store, job: AdapterJob, user: str) -> int:
    """Tries of `user` started so far (by any actor, in any run of the job)."""
    try:
        return int(json.loads(store.get_bytes(adapter_progress_key(job.name, user))).get("attempt", 0))
    except KeyNotFound:
        return 0


def _write_progress(store: Store, job: AdapterJob, attempts: dict[str, int], step: int, total: int) -> None:
    for user, attempt in attempts.items():
        progress = json.dumps({"step": step, "total": total, "attempt": attempt}).encode()
        store.put_bytes(adapter_progress_key(job.name, user), progress)


# ------------------------------------------------------------------------------------------ driver


def run_adapter_job(
    spec: AdapterJobConfig, personalize: PersonalizeConfig | None = None, log: Log = print
) -> dict[str, Any]:
    """Fine-tune and publish the adapters of every user in the manifest `spec.users` (see
    `load_manifest`) on base `spec.base` ("NAME[@alias|version]"), on `spec.workers` Ray Data
    actors, with the recipe `personalize`; returns the summary.

    Submitting the same name again resumes: users already recorded are not trained again."""
    from pstyle.store.registry import Registry

    if not spec.users:
        raise ValueError("an adapter job needs --users (a manifest or a folder of users)")
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
        user_retries=spec.user_retries,
    )
    records: dict[str, dict] = {}
    trainable = {}
    for user, entry in entries.items():
        try:
            check_entry(user, entry)
            trainable[user] = entry
        except UserDataError as exc:  # no valid id: nowhere to record it but the summary
            records[user] = {"user": user, "status": "skipped", "reason": str(exc)}
    for user in _recorded_users(store_obj, job) & trainable.keys():  # resumed: not sent to the actors
        record = _read_record(store_obj, job, user)
        if record is not None:
            records[user] = {**record, "resumed": True}
    todo = {user: entry for user, entry in trainable.items() if user not in records}
    log(f"job {job.name}: {len(trainable)} users on base {base_name} v{version.number} "
        f"({len(trainable) - len(todo)} recorded earlier), {spec.workers} actors")  # fmt: skip
    progress = JobProgress(
        store_obj, job.name, [records[u] for u in trainable if u in records], len(trainable), log
    )
    started = time.perf_counter()
    gpus_per_worker = _train_on_ray(job, todo, spec, progress) if todo else 0.0
    wall = time.perf_counter() - started
    progress.write()
    records.update(progress.records)
    summary = summarize(job, source, records, wall, spec.workers, spec.cpus_per_worker, gpus_per_worker)
    summary_key = f"{ADAPTER_JOBS_PREFIX}/{job.name}/summary.json"
    store_obj.put_bytes(summary_key, json.dumps(summary, indent=1).encode())
    if spec.summary is not None:
        Path(spec.summary).write_text(json.dumps(summary, indent=1))
    log(format_summary(summary))
    return summary


def _recorded_users(store: Store, job: AdapterJob) -> set[str]:
    """Users with a record of this job: one listing, not a read per user of the manifest."""
    prefix = adapter_records_prefix(job.name)
    return {key[len(prefix) : -len(".json")] for key in store.list(prefix) if key.endswith(".json")}


def actor_gpus(actors: int, gpus: float | None, cluster_gpus: float) -> float:
    """GPUs each actor holds. `gpus` None means: what the cluster has. One per actor when there are
    as many GPUs as actors; with fewer, equal shares of 1/k that pack k actors on each GPU (a job
    asking for more whole GPUs than exist would wait forever); none on a CPU-only cluster. A cluster
    whose GPU nodes autoscale from zero shows no GPUs yet: ask for them explicitly there."""
    if gpus is None:
        whole = int(cluster_gpus)
        gpus = 0.0 if whole == 0 else 1.0 / math.ceil(actors / whole)
    return math.floor(gpus * 10_000) / 10_000  # Ray's precision for fractional resources


class JobProgress:
    """Users done / total of a job: collects the records the actors return, logs a line and rewrites
    `jobs/adapters/<job>/progress.json` at most every `every` seconds (and on `write()`)."""

    def __init__(
        self, store: Store, job: str, done: list[dict], total: int, log: Log, every: float = 10.0
    ) -> None:
        self.store, self.key, self.log, self.every = store, adapter_job_progress_key(job), log, every
        self.total = total
        self.counts = dict.fromkeys(("published", "skipped", "failed"), 0)
        for record in done:
            self.counts[record["status"]] += 1
        self.records: dict[str, dict] = {}
        self.started = self.written = time.monotonic()

    def add(self, user: str, record: dict) -> None:
        self.records[user] = record
        self.counts[record["status"]] += 1
        if time.monotonic() - self.written >= self.every:
            self.write()

    def write(self) -> None:
        self.written = time.monotonic()
        hours = (self.written - self.started) / 3600
        new = sum(r["status"] == "published" and not r.get("resumed") for r in self.records.values())
        rate = new / hours if hours > 0 else 0.0
        state = {"done": sum(self.counts.values()), "total": self.total, **self.counts,
                 "users_per_hour": rate, "updated": time.time()}  # fmt: skip
        self.store.put_bytes(self.key, json.dumps(state).encode())
        counts = ", ".join(f"{n} {status}" for status, n in self.counts.items())
        self.log(f"{state['done']}/{self.total} users done ({counts}), {rate:.0f} users/h")


def _train_on_ray(
    job: AdapterJob, entries: dict[str, Any], spec: AdapterJobConfig, progress: JobProgress
) -> float:
    """Stream `entries`' users through a pool of `UserTrainer` actors; returns the GPUs each held."""
    import ray
    import ray.data

    ensure_ray(spec.ray_address)
    actors = min(spec.workers, math.ceil(len(entries) / job.group_size))
    gpus = actor_gpus(actors, spec.gpus_per_worker, ray.cluster_resources().get("GPU", 0))
    rows = [{"user": user, "entry": json.dumps(entry)} for user, entry in sorted(entries.items())]
    # One block per batch, and one batch queued on each actor beside the one it trains (it never
    # waits for the next): users go to whichever actor is free, and a slow batch holds back one other.
    users = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / job.group_size))
    users.context.enable_progress_bars = False  # progress is users done / total (JobProgress)
    trained = users.map_batches(
        UserTrainer,
        batch_size=job.group_size,
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=2),
        num_cpus=spec.cpus_per_worker,
        num_gpus=gpus or None,
        fn_constructor_kwargs={
            "job": job,
            "device": "cuda" if gpus else "cpu",
            "threads": max(1, int(spec.cpus_per_worker)),
        },
    )
    for batch in trained.iter_batches(batch_size=None):
        for user, record in zip(batch["user"], batch["record"], strict=True):
            progress.add(str(user), json.loads(record))
    return gpus


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

"""Personalization on request: each user's job records, the bounded queue, and what happens after.

A job trains one user's adapter from their stored style set and the outputs they rated. Its record,
`users/<user>/jobs/<id>.json`, lives under the owner's prefix: a job id of another user names no
record of the caller, so the API answers 404 exactly as for an id that never existed.

`JobQueue` is the admission rule of the one process that starts jobs (pure Python, so it is tested
without Ray): one live job per user, at most `capacity` live jobs overall. `after_training` applies
the configured policy once the adapter is published as `candidate`:

    promote      production moves to the new version when its held-out style distance beats the
                 current production adapter's (or, with none, the zero-shot base's) by `margin`
    experiment   an A/B experiment for this user: production (or zero-shot) vs candidate
    manual       nothing: the candidate waits for an operator (`pstyle registry alias ...`)
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pstyle.config import PERSONALIZE_POLICIES
from pstyle.ids import ID_PATTERN, validate_id
from pstyle.serving.experiments import Experiment, ExperimentStore, production_vs_candidate
from pstyle.store import KeyNotFound, Store
from pstyle.store.registry import PRODUCTION_ALIAS, Registry, RegistryError

LIVE_STATES = ("queued", "running")


class JobRefused(Exception):
    """A personalization request the service cannot take now: `status` is the HTTP answer."""

    def __init__(self, status: int, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after_s = status, message, retry_after_s


@dataclass
class PersonalizeJob:
    id: str
    user_id: str
    style_set: str  # digest of the set it trains on
    state: str = "queued"  # queued | running | succeeded | failed
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    step: int = 0
    total: int = 0
    before: dict[str, float] | None = None  # held-out metrics of the zero-shot base
    after: dict[str, float] | None = None  # ... and of the new adapter
    version: int | None = None
    decision: str | None = None  # what the policy did with the candidate
    error: str | None = None

    @property
    def adapter_job(self) -> str:
        """The name of the adapter job that trains it (its records and progress in the store)."""
        return f"personalize-{self.id}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_job(user_id: str, style_set: str) -> PersonalizeJob:
    return PersonalizeJob(id=f"j{secrets.token_hex(8)}", user_id=validate_id(user_id), style_set=style_set)


def job_key(user_id: str, job_id: str) -> str:
    return f"users/{validate_id(user_id)}/jobs/{validate_id(job_id, 'job id')}.json"


class JobRecords:
    """Job records in the store, each readable only through its owner's prefix."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def save(self, job: PersonalizeJob) -> PersonalizeJob:
        self.store.put_bytes(job_key(job.user_id, job.id), json.dumps(job.to_dict()).encode())
        return job

    def get(self, user_id: str, job_id: str) -> PersonalizeJob | None:
        """The caller's job, or None for an unknown id, a malformed one, or another user's."""
        if not isinstance(job_id, str) or not ID_PATTERN.fullmatch(job_id):
            return None
        try:
            return PersonalizeJob(**json.loads(self.store.get_bytes(job_key(user_id, job_id))))
        except KeyNotFound:
            return None

    def progress(self, job: PersonalizeJob, progress_key: str) -> PersonalizeJob:
        """`job` with step/total from the running fit's progress record, when there is one yet."""
        if job.state != "running":
            return job
        try:
            data = json.loads(self.store.get_bytes(progress_key))
        except KeyNotFound:
            return job
        job.step, job.total = int(data["step"]), int(data["total"])
        return job


class JobQueue:
    """Admission and order of jobs in the one process that runs them: FIFO, one live job per user,
    `capacity` live jobs in all (queued + running); full answers 429 with a Retry-After."""

    def __init__(self, capacity: int, retry_after_s: int = 30) -> None:
        self.capacity, self.retry_after_s = capacity, retry_after_s
        self.waiting: list[PersonalizeJob] = []
        self.running: dict[str, PersonalizeJob] = {}  # user -> job

    def live(self, user_id: str) -> PersonalizeJob | None:
        if user_id in self.running:
            return self.running[user_id]
        return next((j for j in self.waiting if j.user_id == user_id), None)

    def submit(self, job: PersonalizeJob) -> PersonalizeJob:
        current = self.live(job.user_id)
        if current is not None:
            raise JobRefused(409, f"personalization job {current.id} is already {current.state} for you")
        if len(self.waiting) + len(self.running) >= self.capacity:
            raise JobRefused(429, "personalization queue is full, retry later", self.retry_after_s)
        self.waiting.append(job)
        return job

    def start_next(self, max_running: int) -> PersonalizeJob | None:
        """The oldest waiting job, now counted as running, if fewer than `max_running` run."""
        if not self.waiting or len(self.running) >= max_running:
            return None
        job = self.waiting.pop(0)
        self.running[job.user_id] = job
        return job

    def finished(self, job: PersonalizeJob) -> None:
        self.running.pop(job.user_id, None)


def _held_out_style(registry: Registry, user_id: str, version: int) -> float | None:
    metrics = registry.get("adapter", user_id, version).manifest.get("metrics") or {}
    return (metrics.get("after") or {}).get("style")


def after_training(store: Store, job: PersonalizeJob, policy: str, margin: float) -> str:
    """Apply `policy` to the job's freshly published candidate; returns what was done, in words."""
    if policy not in PERSONALIZE_POLICIES:
        raise ValueError(f"policy must be one of {', '.join(PERSONALIZE_POLICIES)}, got {policy!r}")
    registry = Registry(store)
    user, version = job.user_id, job.version
    if version is None or job.after is None or job.before is None:
        raise ValueError(f"job {job.id} has no published version to act on")
    if policy == "manual":
        return f"candidate v{version} left for an operator"
    if policy == "experiment":
        name = job.adapter_job
        variants = production_vs_candidate()
        ExperimentStore(store).create(Experiment(name, variants, users=(user,)))
        return f"experiment {name} opened: production vs candidate v{version}"
    try:
        current = registry.resolve("adapter", user, PRODUCTION_ALIAS).number
        baseline, against = _held_out_style(registry, user, current), f"production v{current}"
    except RegistryError:
        baseline, against = job.before.get("style"), "the zero-shot base"
    new = job.after.get("style")
    if baseline is None or new is None or new > baseline * (1 - margin):
        return (
            f"candidate v{version} kept: held-out style {new} not {margin:.0%} below {against}'s {baseline}"
        )
    registry.set_alias("adapter", user, PRODUCTION_ALIAS, version)
    return f"promoted v{version}: held-out style {new:.3f} vs {against} {baseline:.3f}"

"""Where adapter jobs keep their records in the store: shared by the jobs that write them and the
service that reads a user's progress, so neither has to import the other."""

from __future__ import annotations

from pstyle.ids import validate_id

ADAPTER_JOBS_PREFIX = (
    "jobs/adapters"  # <job>/users/<user>.json records, <job>/progress.json, <job>/summary.json
)


def adapter_records_prefix(job: str) -> str:
    return f"{ADAPTER_JOBS_PREFIX}/{validate_id(job, 'job name')}/users/"


def adapter_record_key(job: str, user: str) -> str:
    return f"{adapter_records_prefix(job)}{validate_id(user)}.json"


def adapter_job_progress_key(job: str) -> str:
    """{"done", "total", "published", "skipped", "failed", "users_per_hour"} of the whole job."""
    return f"{ADAPTER_JOBS_PREFIX}/{validate_id(job, 'job name')}/progress.json"


def adapter_progress_key(job: str, user: str) -> str:
    """{"step", "total", "attempt"} of the user's fit, rewritten when a try starts and at every
    held-out evaluation ("attempt": tries started so far, which bounds them across actor deaths)."""
    return f"{ADAPTER_JOBS_PREFIX}/{validate_id(job, 'job name')}/progress/{validate_id(user)}.json"

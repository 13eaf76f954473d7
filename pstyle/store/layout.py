"""Where adapter jobs keep their records in the store: shared by the jobs that write them and the
service that reads a user's progress, so neither has to import the other."""

from __future__ import annotations

from pstyle.ids import validate_id

ADAPTER_JOBS_PREFIX = "jobs/adapters"  # <job>/users/<user>.json records, <job>/summary.json


def adapter_record_key(job: str, user: str) -> str:
    return f"{ADAPTER_JOBS_PREFIX}/{validate_id(job, 'job name')}/users/{validate_id(user)}.json"


def adapter_progress_key(job: str, user: str) -> str:
    """{"step", "total"} of the user's fit, rewritten at every held-out evaluation."""
    return f"{ADAPTER_JOBS_PREFIX}/{validate_id(job, 'job name')}/progress/{validate_id(user)}.json"

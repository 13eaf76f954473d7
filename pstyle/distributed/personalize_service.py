"""One personalization job as a Ray task: the user's manifest, a one-user adapter job, the policy.

The serving app's `Personalizer` deployment (serve/app.py) admits jobs (`JobQueue`) and starts each
as `run_personalize_job.remote(...)`; the task updates the job's record in the store as it goes, so
any ingress replica can answer `GET /v1/me/jobs/{id}` and a restarted service still knows the outcome.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

from pstyle.config import AdapterJobConfig, ServeConfig
from pstyle.distributed.adapter_jobs import run_adapter_job, save_manifest
from pstyle.serving.personalize_jobs import JobRecords, PersonalizeJob, after_training
from pstyle.serving.style_sets import user_entry
from pstyle.store import open_store

log = logging.getLogger(__name__)


def personalize(config: ServeConfig, job: PersonalizeJob) -> PersonalizeJob:
    """Train, publish as candidate, apply `config.after_personalize`; the final record is returned
    (and saved). Failures end in state `failed` with the reason, never in a job stuck `running`."""
    store = open_store(config.store)
    records = JobRecords(store)
    job.state, job.started = "running", time.time()
    records.save(job)
    try:
        manifest = save_manifest(store, job.adapter_job, {job.user_id: user_entry(store, job.user_id)})
        spec = AdapterJobConfig(
            users=manifest,
            base=f"{config.base}@{config.base_ref}",
            store=store.uri,
            name=job.adapter_job,
            workers=1,
            cpus_per_worker=config.personalize_cpus,
            gpus_per_worker=config.personalize_gpus,
            n_content=config.personalize_content,
        )
        summary = run_adapter_job(spec, config.personalize, log=log.info)
        record = summary["users"][job.user_id]
        if record["status"] != "published":
            raise RuntimeError(record.get("reason", record["status"]))
        job.version, job.before, job.after = record["version"], record["before"], record["after"]
        job.step = job.total = record.get("steps_run", 0)
        job.decision = after_training(store, job, config.after_personalize, config.promote_margin)
        job.state = "succeeded"
    except Exception as exc:  # the owner reads why in their job record
        job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
        log.exception("personalization job %s failed", job.id)
    job.finished = time.time()
    return records.save(job)


@ray.remote(num_cpus=0)  # the adapter job's Ray Data actor holds the CPUs
def run_personalize_job(config: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    return personalize(ServeConfig.from_dict(config), PersonalizeJob(**job)).to_dict()

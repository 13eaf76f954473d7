"""Personalization on request without Ray: admission, private job records, style sets, the policy."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from pstyle.serving.experiments import ExperimentStore
from pstyle.serving.personalize_jobs import JobQueue, JobRecords, JobRefused, after_training, new_job
from pstyle.serving.style_sets import StyleSetError, StyleSets, user_entry
from pstyle.store import LocalStore, Store
from pstyle.store.events import EventLog
from pstyle.store.registry import Registry


def png(colour: tuple[int, int, int], size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_queue_admits_one_live_job_per_user_and_is_bounded() -> None:
    queue = JobQueue(capacity=2, retry_after_s=7)
    a = queue.submit(new_job("alice", "s1"))
    with pytest.raises(JobRefused) as twice:
        queue.submit(new_job("alice", "s1"))
    assert twice.value.status == 409 and a.id in twice.value.message
    queue.submit(new_job("bob", "s2"))
    with pytest.raises(JobRefused) as full:
        queue.submit(new_job("carol", "s3"))
    assert full.value.status == 429 and full.value.retry_after_s == 7
    started = queue.start_next(max_running=1)
    assert started is a and queue.start_next(max_running=1) is None  # FIFO, one at a time
    queue.finished(a)
    assert queue.start_next(max_running=1).user_id == "bob"
    queue.submit(new_job("alice", "s1"))  # alice's first job is over: she may start another


def test_job_records_are_private_to_their_owner(local: LocalStore) -> None:
    records = JobRecords(local)
    job = records.save(new_job("alice", "s1"))
    assert records.get("alice", job.id).id == job.id
    assert records.get("bob", job.id) is None  # another user's id names nothing of theirs
    assert records.get("alice", "../bob/jobs/x") is None and records.get("alice", "j0") is None


def test_style_set_replaces_atomically_and_feeds_the_manifest_entry(local: LocalStore) -> None:
    sets = StyleSets(local)
    first = sets.put("alice", [("a.png", png((255, 0, 0))), ("b.png", png((0, 0, 255)))])
    with pytest.raises(StyleSetError, match="broken.png"):
        sets.put("alice", [("c.png", png((0, 255, 0))), ("broken.png", b"\x89PNG\r\n\x1a\nnope")])
    assert sets.get("alice") == first  # the failed upload changed nothing
    second = sets.put("alice", [("c.png", png((0, 255, 0)))])
    assert second.digest != first.digest and sets.load(second, 32).shape == (1, 3, 32, 32)
    assert sets.get("bob") is None
    events = EventLog(local)
    kept = "users/alice/outputs/abc.png"
    events.append("feedback", "alice", image_id="x", rating=5, image=kept)
    events.append("feedback", "alice", image_id="x", rating=2, image=kept)  # the latest rating counts
    events.append("feedback", "alice", image_id="y", rating=4, image="users/bob/outputs/def.png")
    events.append("feedback", "bob", image_id="z", rating=1, image="users/bob/outputs/def.png")
    events.flush()
    entry = user_entry(local, "alice")
    assert entry == {"styles": list(second.images), "feedback": [{"image": kept, "rating": 2}]}
    with pytest.raises(StyleSetError, match="no style set"):
        user_entry(local, "bob")


def publish(store: Store, make_adapter, tmp_path: Path, style: float | None, alias: str) -> int:  # noqa: ANN001
    metrics = {"after": {"style": style}} if style is not None else {}
    path = make_adapter(tmp_path / f"a{style}", "alice")
    return Registry(store).publish_adapter("alice", path, metrics=metrics, aliases=[alias]).number


@pytest.mark.parametrize(
    ("production", "new", "promoted"),
    [(None, 0.8, True), (None, 0.97, False), (0.5, 0.45, True), (0.5, 0.49, False)],
)
def test_promote_policy_compares_with_production_or_the_base(
    local: LocalStore,
    make_adapter,
    tmp_path: Path,
    production: float | None,
    new: float,
    promoted: bool,  # noqa: ANN001
) -> None:
    if production is not None:
        current = publish(local, make_adapter, tmp_path, production, "production")
    job = new_job("alice", "s1")
    job.version = publish(local, make_adapter, tmp_path, new, "candidate")
    job.before, job.after = {"style": 1.0}, {"style": new}  # the zero-shot base scored 1.0
    decision = after_training(local, job, "promote", margin=0.05)
    aliases = Registry(local).aliases("adapter", "alice")
    assert decision.startswith("promoted") == promoted, decision
    expected = job.version if promoted else (current if production is not None else None)
    assert aliases.get("production") == expected


def test_experiment_and_manual_policies(local: LocalStore, make_adapter, tmp_path: Path) -> None:  # noqa: ANN001
    job = new_job("alice", "s1")
    job.version = publish(local, make_adapter, tmp_path, 0.5, "candidate")
    job.before, job.after = {"style": 1.0}, {"style": 0.5}
    assert "left for an operator" in after_training(local, job, "manual", 0.05)
    assert "production" not in Registry(local).aliases("adapter", "alice")
    after_training(local, job, "experiment", 0.05)
    (experiment,) = ExperimentStore(local).list()
    assert experiment.users == ("alice",) and [v.ref for v in experiment.variants] == [
        "production",
        "candidate",
    ]
    assert json.loads(local.get_bytes(f"experiments/{experiment.name}.json"))["status"] == "running"

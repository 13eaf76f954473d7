"""The feedback loop: watermark windows, per-user counts, experiments opened and extended, decide;
without Ray (an injected trainer), and one tiny real run on a local Ray."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from pstyle.config import AdapterJobConfig, LoopConfig, PersonalizeConfig
from pstyle.distributed.feedback_loop import STATE_KEY, run_loop
from pstyle.serving.experiments import ExperimentStore
from pstyle.serving.style_sets import StyleSets
from pstyle.store import LocalStore, Store
from pstyle.store.events import EventLog
from pstyle.store.registry import Registry

T0 = 1_700_000_000.0  # a fixed clock: windows end at `now` (settle_s=0 below)


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(torch.randint(0, 256, (64, 64, 3), generator=torch.Generator().manual_seed(seed),
                                  dtype=torch.uint8).numpy()).save(buf, "PNG")  # fmt: skip
    return buf.getvalue()


def rate(store: Store, user: str, *times: float) -> None:
    """One rating of a kept output per time stamp (`ts` given explicitly, as a replica stamps it)."""
    with EventLog(store) as log:
        for i, ts in enumerate(times):
            log.append("feedback", user, ts=ts, rating=5, image=f"users/{user}/outputs/{int(ts)}-{i}.png")


class FakeTrain:
    """Stands in for `run_adapter_job`: publishes a candidate per user of the manifest (or fails)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    def __call__(self, spec: AdapterJobConfig, recipe: PersonalizeConfig, log: Any) -> dict[str, Any]:
        store = LocalStore(spec.store)
        users = json.loads(store.get_bytes(spec.users))["users"]
        self.calls.append((spec.name, users))
        if self.fail:
            raise RuntimeError("the cluster went away")
        files = Path(spec.store).parent / "adapter"
        files.mkdir(exist_ok=True)
        (files / "adapter.safetensors").write_bytes(b"weights")
        (files / "adapter.json").write_text("{}")
        for user in users:
            Registry(store).publish("adapter", user, files, aliases=["candidate"])
        return {"published": sorted(users), "failed": [], "skipped": []}


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "store")
    for i, user in enumerate(["alice", "bob"]):  # carol rates but has no style set
        StyleSets(store).put(user, [(f"{k}.png", png(10 * i + k)) for k in range(3)])
    return store


def loop(store: Store, train: FakeTrain, now: float, **changes: Any) -> dict[str, Any]:
    cfg = LoopConfig(**{"store": str(store.root), "min_new_ratings": 2, "settle_s": 0.0, **changes})
    return run_loop(cfg, log=lambda _: None, train=train, now=now)


def test_users_with_enough_new_ratings_are_retrained_once(store: LocalStore) -> None:
    rate(store, "alice", T0 - 30, T0 - 20)
    rate(store, "bob", T0 - 10)
    rate(store, "carol", T0 - 30, T0 - 20)
    train = FakeTrain()
    first = loop(store, train, T0)
    [(job, entries)] = train.calls
    assert job == "loop-run-000001" and list(entries) == ["alice"] and first["published"] == ["alice"]
    assert entries["alice"]["styles"] == list(StyleSets(store).get("alice").images)
    assert len(entries["alice"]["feedback"]) == 2  # the rated outputs train it too
    assert "no style set" in first["waiting"]["carol"]
    experiment = ExperimentStore(store).get(first["experiment"])
    assert experiment.users == ("alice",) and [v.ref for v in experiment.variants] == [
        "production",
        "candidate",
    ]
    assert any("not enough data" in line for line in first["decisions"])  # decide ran on it
    state = json.loads(store.get_bytes(STATE_KEY))
    assert state == {"watermark": T0, "run": 1, "pending": {"bob": 1, "carol": 2}}

    again = loop(store, train, T0 + 60)  # nothing new: nobody is trained, the state only moves on
    assert len(train.calls) == 1 and again["published"] == [] and again["experiment"] is None
    assert json.loads(store.get_bytes(STATE_KEY))["pending"] == state["pending"]

    rate(store, "bob", T0 + 70)
    rate(store, "alice", T0 + 71, T0 + 72)  # alice is in the running experiment: she waits
    third = loop(store, train, T0 + 80)
    assert list(train.calls[-1][1]) == ["bob"] and "running experiment" in third["waiting"]["alice"]
    assert third["experiment"] == first["experiment"]  # the running loop experiment grew
    assert ExperimentStore(store).get(first["experiment"]).users == ("alice", "bob")
    assert json.loads(store.get_bytes(STATE_KEY))["pending"] == {"alice": 2, "carol": 2}


def test_a_run_cut_short_is_repeated_whole(store: LocalStore) -> None:
    rate(store, "alice", T0 - 20, T0 - 10)
    with pytest.raises(RuntimeError, match="went away"):
        loop(store, FakeTrain(fail=True), T0)
    assert not store.exists(STATE_KEY) and ExperimentStore(store).list() == []
    rate(store, "bob", T0 + 5, T0 + 6)
    train = FakeTrain()
    result = loop(store, train, T0 + 10)  # same start, same job name: resumable, nothing counted twice
    [(job, entries)] = train.calls
    assert job == "loop-run-000001" and sorted(entries) == ["alice", "bob"]
    assert result["ratings"] == {"alice": 2, "bob": 2} and result["window"] == [None, T0 + 10]


def test_windows_meet_at_the_cut_without_loss_or_double_counting(store: LocalStore) -> None:
    rate(store, "bob", T0 - 1, T0, T0, T0 + 1)  # two events exactly at the first cut
    train = FakeTrain()
    first = loop(store, train, T0, min_new_ratings=100)
    second = loop(store, train, T0 + 1, min_new_ratings=100)  # T0 + 1 itself is the next window's
    third = loop(store, train, T0 + 2, min_new_ratings=100)
    assert [r["ratings"] for r in (first, second, third)] == [{"bob": 1}, {"bob": 2}, {"bob": 1}]
    assert json.loads(store.get_bytes(STATE_KEY))["pending"] == {"bob": 4} and not train.calls
    late = loop(store, train, T0 - 100, min_new_ratings=100)  # a clock behind the watermark reads nothing
    assert late["window"] == [T0 + 2, T0 + 2] and late["ratings"] == {}

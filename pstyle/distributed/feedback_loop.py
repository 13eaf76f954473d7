"""The feedback loop, one scheduled run at a time: new ratings -> retrained adapters -> an A/B
experiment -> decisions (`pstyle loop run`, `ray_jobs/retrain_from_feedback.py`).

A run:

1. counts each user's valid ratings among the `feedback` events of its window and adds them to the
   user's count of ratings since their last retrain;
2. retrains, in one adapter job on Ray Data (`run_adapter_job`), every user whose count reached
   `min_new_ratings`, from a manifest of their style set and rated outputs (`style_sets.user_entry`);
   each adapter is published as `candidate`. A user waits (count kept) while a running experiment
   serves them `candidate` (retraining would change the candidate under it), while they have no
   style set, or after a failed fit; a published user's count restarts at 0;
3. puts the published users into the running loop experiment (production vs candidate, named
   `<experiment_prefix>-<time>`), or opens one;
4. writes its state, `loop/state.json`: the watermark, the run number and the counts;
5. runs `pstyle.serving.decisions.decide` on every running experiment.

Watermark: a window is the half-open interval [watermark, now - settle_s), cut at a time, never at
the newest event seen, and the next window starts exactly where it ends. So an event stamped
exactly at the cut is counted once, in the later window, and events a replica held in its buffer
(up to its flush interval) or stamped with a lagging clock still fall in a window not yet read; an
event written more than `settle_s` after its time stamp is missed. The state is written only after
steps 1-3 succeed: a run cut short leaves it as it was, and the next run repeats the step over a
window from the same start, with the same adapter-job name (`<prefix>-run-<n>`; users the cut run
published are resumed, not trained again) and the same running experiment (extended, not
duplicated). Runs must not overlap (they would train the same users twice): the Kubernetes CronJob
says `concurrencyPolicy: Forbid`; a KubeRay 1.6 RayCronJob has no such field, so schedule it further
apart than a run lasts.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pstyle.config import AdapterJobConfig, LoopConfig, PersonalizeConfig
from pstyle.distributed.adapter_jobs import Log, run_adapter_job, save_manifest
from pstyle.ratings import parse_rating
from pstyle.serving.decisions import decide
from pstyle.serving.experiments import Experiment, ExperimentStore, assign, production_vs_candidate
from pstyle.serving.style_sets import StyleSetError, user_entry
from pstyle.store import KeyNotFound, Store, open_store
from pstyle.store.events import read_events
from pstyle.store.registry import CANDIDATE_ALIAS

STATE_KEY = "loop/state.json"
Train = Callable[[AdapterJobConfig, PersonalizeConfig, Log], dict[str, Any]]


@dataclass
class LoopState:
    watermark: float | None = None  # feedback events before this time are counted; None: none yet
    run: int = 0  # runs completed
    pending: dict[str, int] = field(default_factory=dict)  # ratings since each user's last retrain

    @classmethod
    def load(cls, store: Store) -> LoopState:
        try:
            return cls(**json.loads(store.get_bytes(STATE_KEY)))
        except KeyNotFound:
            return cls()

    def save(self, store: Store) -> None:
        store.put_bytes(STATE_KEY, json.dumps(asdict(self), indent=1).encode())


def new_ratings(store: Store, start: float | None, end: float) -> Counter[str]:
    """Valid ratings per user among the feedback events of [start, end)."""
    events = read_events(store, "feedback", start=start, end=end)
    return Counter(e["user_id"] for e in events if parse_rating(e.get("rating")) is not None)


def serving_candidate(experiments: list[Experiment], users: list[str]) -> set[str]:
    """The users a running experiment serves `candidate` to (or may: any arm naming it)."""
    running = [
        e for e in experiments if e.status == "running" and any(v.ref == CANDIDATE_ALIAS for v in e.variants)
    ]
    return {u for u in users if any(assign(e, u) is not None for e in running)}


def enroll(experiments: ExperimentStore, prefix: str, users: list[str]) -> str:
    """Add `users` to the running `<prefix>-...` experiment, or open one; returns its name."""
    running = [
        e
        for e in experiments.list()
        if e.status == "running" and e.name.startswith(f"{prefix}-") and e.users is not None
    ]
    if running:
        return experiments.add_users(running[0].name, users).name
    name = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    variants = production_vs_candidate()
    return experiments.create(Experiment(name, variants, users=tuple(users))).name


def run_loop(
    cfg: LoopConfig, log: Log = print, train: Train = run_adapter_job, now: float | None = None
) -> dict[str, Any]:
    """One run (see the module docstring); `train` runs the adapter job, `now` ends the window at
    `now - settle_s` (default: the clock). Returns what it did."""
    store = open_store(cfg.store)
    state = LoopState.load(store)
    start = state.watermark
    end = (time.time() if now is None else now) - cfg.settle_s
    end = max(end, start) if start is not None else end
    counts = new_ratings(store, start, end)
    pending = Counter(state.pending) + counts
    log(f"run {state.run + 1}: {sum(counts.values())} new ratings from {len(counts)} users")
    experiments = ExperimentStore(store)
    due = sorted(u for u, n in pending.items() if n >= cfg.min_new_ratings)
    busy = serving_candidate(experiments.list(), due)
    waiting = {u: "in a running experiment that serves candidate" for u in sorted(busy)}
    entries = {}
    ready = [u for u in due if u not in busy]
    feedback = list(read_events(store, "feedback")) if ready else []  # read once for every user
    for user in ready:
        try:
            entries[user] = user_entry(store, user, [e for e in feedback if e["user_id"] == user])
        except StyleSetError as exc:
            waiting[user] = str(exc)
    for user, why in waiting.items():
        log(f"{user} waits ({pending[user]} new ratings): {why}")
    job_name = f"{cfg.experiment_prefix}-run-{state.run + 1:06d}"
    summary = None
    published: list[str] = []
    experiment = None
    if entries:
        manifest = save_manifest(store, job_name, entries)
        spec = AdapterJobConfig(users=manifest, base=cfg.base, store=store.uri, name=job_name,
                                workers=cfg.workers, ray_address=cfg.ray_address)  # fmt: skip
        summary = train(spec, cfg.personalize, log)
        published = summary["published"]
        for user in published:
            pending.pop(user, None)
    if published:
        experiment = enroll(experiments, cfg.experiment_prefix, published)
        log(f"experiment {experiment}: production vs candidate for {', '.join(published)}")
    LoopState(watermark=end, run=state.run + 1, pending=dict(sorted(pending.items()))).save(store)
    decisions = decide(store, cfg.decide)
    for decision in decisions:
        log(decision.line())
    return {
        "run": state.run + 1,
        "window": [start, end],
        "ratings": dict(counts),
        "waiting": waiting,
        "job": summary,
        "published": published,
        "failed": summary["failed"] if summary else [],
        "experiment": experiment,
        "decisions": [d.line() for d in decisions],
    }

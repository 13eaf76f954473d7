"""A/B tests of adapter versions: sticky assignment, a report from the event log, promotion.

An experiment splits a cohort of users between variants; each variant names an adapter ref (an
alias such as `production`/`candidate`, or a version number) that the serving side resolves per
user. Experiments live in the store as `experiments/<name>.json`.

Assignment hashes `"<experiment>:<user>"` (sha256) into two independent uniforms: one against
`percent` for cohort membership, one against the cumulative weights for the variant. It needs no
state, so every replica agrees, a user keeps their variant for the whole experiment, and raising
`percent` only adds users (those already in stay in, with the same variant).

The serving side logs `exposure` events (experiment, variant, latency_ms, error) and users log
`feedback` events (experiment, variant, rating 1-5) through `pstyle.store.events.EventLog`; `report`
reads them back. Its test treats each rating as an independent sample: a user who rates a lot
weighs more than one who rates once.

A stopped experiment may carry its `decision` (promoted, rolled_back) and the `reason`, written once
by whoever stopped it (`promote`, `pstyle.serving.decisions`); records written before these fields
existed read back with both None.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pstyle.ids import ID_PATTERN, validate_id
from pstyle.ratings import parse_rating
from pstyle.serving.stale_cache import StaleCache
from pstyle.store import KeyExists, KeyNotFound, Store
from pstyle.store.events import read_events
from pstyle.store.registry import CANDIDATE_ALIAS, PRODUCTION_ALIAS, Registry, RegistryError

log = logging.getLogger(__name__)

PREFIX = "experiments"
STATUSES = ("running", "stopped")
PROMOTED, ROLLED_BACK = "promoted", "rolled_back"  # decisions recorded on a stopped experiment
MIN_RATINGS = 30
ALPHA = 0.05
VERSION = re.compile(r"[1-9][0-9]{0,8}")
CLOCK_SKEW_S = 3600.0  # how far an event's clock may lag the experiment's creation and still count


class ExperimentError(ValueError):
    """An experiment that does not exist, exists already, or cannot be promoted."""


def _check_ref(ref: str) -> str:
    if not isinstance(ref, str) or not (VERSION.fullmatch(ref) or ID_PATTERN.fullmatch(ref)):
        raise ValueError(f"invalid adapter ref {ref!r}: use an alias name or a version number")
    return ref


@dataclass(frozen=True)
class Variant:
    """One arm: `ref` is the adapter alias (e.g. production) or version number (as a string) it serves."""

    name: str
    ref: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        validate_id(self.name, "variant name")
        _check_ref(self.ref)
        if not isinstance(self.weight, int | float) or not math.isfinite(self.weight) or self.weight <= 0:
            raise ValueError(f"variant {self.name!r}: weight must be a positive number, got {self.weight!r}")


@dataclass(frozen=True)
class Experiment:
    """Variants served to `percent` of `users` (None: everybody), while `status` is running."""

    name: str
    variants: tuple[Variant, ...]
    percent: float = 100.0
    users: tuple[str, ...] | None = None
    status: str = "running"
    created: float = field(default_factory=time.time)
    decision: str | None = None  # set when stopped by a decision: promoted, rolled_back
    reason: str | None = None  # why, in words (the test, the guardrail)
    _members: frozenset[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_id(self.name, "experiment name")
        object.__setattr__(self, "variants", tuple(self.variants))
        if self.users is not None:
            object.__setattr__(self, "users", tuple(validate_id(u) for u in self.users))
            object.__setattr__(self, "_members", frozenset(self.users))  # O(1) membership per request
        if len(self.variants) < 2:
            raise ValueError(f"experiment {self.name!r} needs at least 2 variants")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name!r}: variant names must be distinct, got {names}")
        if not isinstance(self.percent, int | float) or not 0 < self.percent <= 100:
            raise ValueError(f"experiment {self.name!r}: percent must be in (0, 100], got {self.percent!r}")
        if self.status not in STATUSES:
            raise ValueError(f"experiment {self.name!r}: status must be one of {STATUSES}")

    def eligible(self, user_id: str) -> bool:
        """Whether the user list (None: everybody) includes the user; `percent` still samples them."""
        return self._members is None or user_id in self._members

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise ExperimentError(f"experiment {self.name!r} has no variant {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "variants": [{"name": v.name, "ref": v.ref, "weight": v.weight} for v in self.variants],
            "percent": self.percent,
            "users": list(self.users) if self.users is not None else None,
            "status": self.status,
            "created": self.created,
            "decision": self.decision,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Experiment:
        users = data.get("users")
        return cls(
            name=data["name"],
            variants=tuple(Variant(v["name"], str(v["ref"]), v.get("weight", 1.0)) for v in data["variants"]),
            percent=data.get("percent", 100.0),
            users=tuple(users) if users is not None else None,
            status=data.get("status", "running"),
            created=data["created"] if "created" in data else time.time(),  # absent: a new experiment
            decision=data.get("decision"),
            reason=data.get("reason"),
        )


def production_vs_candidate() -> tuple[Variant, Variant]:
    """The two arms every adapter experiment pstyle opens itself: the `production` and `candidate` aliases."""
    return Variant(PRODUCTION_ALIAS, PRODUCTION_ALIAS), Variant(CANDIDATE_ALIAS, CANDIDATE_ALIAS)


def _uniforms(exp_name: str, user_id: str) -> tuple[float, float]:
    """Two independent uniforms in [0, 1) from sha256(f"{exp_name}:{user_id}") (64 bits each)."""
    h = hashlib.sha256(f"{exp_name}:{user_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64, int.from_bytes(h[8:16], "big") / 2**64


def assign(exp: Experiment, user_id: str) -> Variant | None:
    """The user's variant, or None when the user is outside the cohort (not in `users`, or not in the
    `percent` sample). Deterministic: the same experiment and user always give the same answer."""
    if not exp.eligible(user_id):
        return None
    cohort, pick = _uniforms(exp.name, user_id)
    if cohort * 100.0 >= exp.percent:
        return None
    total = sum(v.weight for v in exp.variants)
    cumulative = 0.0
    for v in exp.variants:
        cumulative += v.weight
        if pick * total < cumulative:
            return v
    return exp.variants[-1]  # float rounding at the very top


class ExperimentStore:
    """Experiments in the artifact store.

    `active_for` serves from the list of running experiments cached for `cache_ttl_s`, so a new or
    stopped experiment reaches a serving replica within that delay. After that the list is reloaded
    in the background while requests get the last one, which also serves for `max_stale_s` while
    the store is unreachable (`StaleCache`). The first load is blocking I/O: from async code, call
    it in a thread.
    """

    def __init__(self, store: Store, cache_ttl_s: float = 5.0, max_stale_s: float = 0.0) -> None:
        self.store = store
        self.cache_ttl_s = cache_ttl_s
        self._running: StaleCache[str, list[Experiment]] = StaleCache(
            cache_ttl_s, max_stale_s, name="experiments"
        )

    def _key(self, name: str) -> str:
        return f"{PREFIX}/{validate_id(name, 'experiment name')}.json"

    def create(self, exp: Experiment) -> Experiment:
        try:
            self.store.put_bytes(self._key(exp.name), json.dumps(exp.to_dict()).encode(), if_absent=True)
        except KeyExists:
            raise ExperimentError(f"experiment {exp.name!r} already exists") from None
        self._invalidate()
        return exp

    def get(self, name: str) -> Experiment:
        try:
            return Experiment.from_dict(json.loads(self.store.get_bytes(self._key(name))))
        except KeyNotFound:
            raise ExperimentError(f"no experiment {name!r}") from None

    def list(self) -> list[Experiment]:
        """Every experiment, by name."""
        prefix = f"{PREFIX}/"
        return [
            Experiment.from_dict(json.loads(self.store.get_bytes(key)))
            for key in self.store.list(prefix)
            if key.endswith(".json") and "/" not in key[len(prefix) :]
        ]

    def stop(self, name: str, decision: str | None = None, reason: str | None = None) -> Experiment:
        """Mark the experiment stopped, with the decision and reason if given (idempotent: a stopped
        experiment keeps the first ones); its events and record stay for reports."""
        exp = self.get(name)
        if exp.status != "stopped":
            exp = self._put({**exp.to_dict(), "status": "stopped", "decision": decision, "reason": reason})
        self._invalidate()
        return exp

    def add_users(self, name: str, users: Sequence[str]) -> Experiment:
        """Widen a running experiment's user list (existing members keep their variant: assignment is
        per user). Read-modify-write: one writer at a time per experiment."""
        exp = self.get(name)
        if exp.status != "running" or exp.users is None:
            raise ExperimentError(f"experiment {name!r} is not a running experiment with a user list")
        new = [u for u in dict.fromkeys(users) if not exp.eligible(u)]
        if new:
            exp = self._put({**exp.to_dict(), "users": [*exp.users, *new]})
            self._invalidate()
        return exp

    def _put(self, data: dict[str, Any]) -> Experiment:
        exp = Experiment.from_dict(data)
        self.store.put_bytes(self._key(exp.name), json.dumps(exp.to_dict()).encode())
        return exp

    def active_for(self, user_id: str) -> list[Experiment]:
        """Running experiments whose cohort includes the user (so `assign` gives a variant for each)."""
        validate_id(user_id)
        return [e for e in self._running_experiments() if assign(e, user_id) is not None]

    @property
    def stale_served(self) -> int:
        return self._running.stale_served

    def _running_experiments(self) -> list[Experiment]:
        return self._running.get("running", lambda: [e for e in self.list() if e.status == "running"])

    def _invalidate(self) -> None:
        self._running.clear()


# ---- report ----------------------------------------------------------------------------------


def _num(value: float | None) -> float | None:
    """A JSON-safe float: NaN/inf become None."""
    return float(value) if value is not None and math.isfinite(value) else None


def _rating_stats(ratings: Sequence[float]) -> dict[str, Any]:
    from scipy import stats

    n = len(ratings)
    if n == 0:
        return {"ratings": 0, "rating_mean": None, "rating_std": None, "rating_ci95": None}
    mean = sum(ratings) / n
    if n < 2:
        return {"ratings": 1, "rating_mean": mean, "rating_std": None, "rating_ci95": None}
    std = math.sqrt(sum((r - mean) ** 2 for r in ratings) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"ratings": n, "rating_mean": mean, "rating_std": std, "rating_ci95": [mean - half, mean + half]}


def compare(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Welch's t-test and Mann-Whitney U between two rating samples (two-sided)."""
    from scipy import stats

    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    if len(set(a)) == 1 and len(set(b)) == 1:  # zero variance on both sides: the t statistic is undefined
        t, p = (0.0, 1.0) if mean_a == mean_b else (math.copysign(math.inf, mean_a - mean_b), 0.0)
    else:
        result = stats.ttest_ind(a, b, equal_var=False)
        t, p = float(result.statistic), float(result.pvalue)
    mw = stats.mannwhitneyu(a, b, alternative="two-sided")
    return {
        "welch_t": _num(t),
        "p_value": p,
        "mannwhitney_u": float(mw.statistic),
        "mannwhitney_p": _num(float(mw.pvalue)),
        "mean_diff": mean_a - mean_b,
    }


def _events(store: Store, kind: str, exp: Experiment) -> list[dict[str, Any]]:
    start, end = exp.created - CLOCK_SKEW_S, time.time() + CLOCK_SKEW_S
    return [e for e in read_events(store, kind, start=start, end=end) if e.get("experiment") == exp.name]


@dataclass
class Arm:
    """One variant's samples from the event log: what `report` summarises and decisions test."""

    exposures: int = 0
    errors: int = 0
    users: set[str] = field(default_factory=set)
    latencies: list[float] = field(default_factory=list)  # ms, finite values only
    ratings: list[float] = field(default_factory=list)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.exposures if self.exposures else None

    def latency_ms(self, percentile: float) -> float | None:
        """The arm's latency at `percentile` (0-100), or None before any exposure was timed."""
        import numpy as np

        return float(np.percentile(self.latencies, percentile)) if self.latencies else None


def arms(store: Store, exp: Experiment) -> tuple[dict[str, Arm], int]:
    """({variant: Arm}, how many events named no variant of `exp` or carried no valid rating)."""
    out = {v.name: Arm() for v in exp.variants}
    ignored = 0
    for e in _events(store, "exposure", exp):
        arm, latency = out.get(e.get("variant")), e.get("latency_ms")
        if arm is None:
            ignored += 1
            continue
        arm.exposures += 1
        arm.users.add(e["user_id"])
        arm.errors += bool(e.get("error", False))
        if isinstance(latency, int | float) and not isinstance(latency, bool) and math.isfinite(latency):
            arm.latencies.append(float(latency))
    for e in _events(store, "feedback", exp):
        arm, rating = out.get(e.get("variant")), parse_rating(e.get("rating"))
        if arm is None or rating is None:
            ignored += 1
            continue
        arm.ratings.append(rating)
    return out, ignored


def report(store: Store, name: str, min_ratings: int = MIN_RATINGS, alpha: float = ALPHA) -> dict[str, Any]:
    """Per-variant exposures, users, errors, latency and ratings (mean, 95% t CI), a test between the
    two variants with the most ratings, and a verdict. JSON-serializable."""
    exp = ExperimentStore(store).get(name)
    names = [v.name for v in exp.variants]
    samples, ignored = arms(store, exp)
    ratings = {n: samples[n].ratings for n in names}

    variants = {}
    for v in exp.variants:
        arm = samples[v.name]
        variants[v.name] = {
            "ref": v.ref,
            "weight": v.weight,
            "exposures": arm.exposures,
            "users": len(arm.users),
            "errors": arm.errors,
            "error_rate": arm.error_rate,
            "latency_ms_mean": sum(arm.latencies) / len(arm.latencies) if arm.latencies else None,
            "latency_ms_p50": arm.latency_ms(50),
            "latency_ms_p99": arm.latency_ms(99),
            **_rating_stats(arm.ratings),
        }

    # The two best-populated variants (by ratings; declaration order breaks ties).
    a, b = sorted(names, key=lambda n: -len(ratings[n]))[:2]
    test = None
    if len(ratings[a]) >= 2 and len(ratings[b]) >= 2:
        test = {"variants": [a, b], **compare(ratings[a], ratings[b])}
    winner = None
    if test is None or min(len(ratings[a]), len(ratings[b])) < min_ratings:
        verdict = "not enough data"
    elif test["p_value"] < alpha:
        winner = a if test["mean_diff"] > 0 else b
        verdict = f"winner: {winner}"
    else:
        verdict = "no significant difference yet"
    return {
        "experiment": exp.name,
        "status": exp.status,
        "percent": exp.percent,
        "variants": variants,
        "test": test,
        "min_ratings": min_ratings,
        "alpha": alpha,
        "winner": winner,
        "verdict": verdict,
        "ignored_events": ignored,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(rep: dict[str, Any]) -> str:
    """A small table: one row per variant, then the test and the verdict."""
    lines = [
        f"experiment {rep['experiment']} ({rep['status']}, {rep['percent']:g}% of users)",
        f"{'variant':<16}{'ref':<14}{'exposures':>10}{'users':>8}{'errors':>8}{'lat ms':>9}{'ratings':>9}"
        f"  mean rating [95% CI]",
    ]
    for name, row in rep["variants"].items():
        ci = row["rating_ci95"]
        rating = _fmt(row["rating_mean"], ".2f") + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        lines.append(
            f"{name:<16}{row['ref']:<14}{row['exposures']:>10}{row['users']:>8}{row['errors']:>8}"
            f"{_fmt(row['latency_ms_mean'], '.1f'):>9}{row['ratings']:>9}  {rating}"
        )
    test = rep["test"]
    if test:
        a, b = test["variants"]
        lines.append(
            f"{a} vs {b}: diff {test['mean_diff']:+.3f}, Welch t={_fmt(test['welch_t'], '.3f')} "
            f"p={test['p_value']:.4g}, Mann-Whitney p={_fmt(test['mannwhitney_p'], '.4g')}"
        )
    lines.append(
        f"verdict: {rep['verdict']} (p < {rep['alpha']}, >= {rep['min_ratings']} ratings per variant)"
    )
    return "\n".join(lines)


# ---- promote ---------------------------------------------------------------------------------


def exposed_users(store: Store, name: str) -> list[str]:
    """Every user with at least one exposure event in the experiment, sorted."""
    exp = ExperimentStore(store).get(name)
    return sorted({e["user_id"] for e in _events(store, "exposure", exp)})


def promote(
    store: Store,
    registry: Registry,
    name: str,
    force_variant: str | None = None,
    min_ratings: int = MIN_RATINGS,
    alias: str = PRODUCTION_ALIAS,
    reason: str | None = None,
) -> dict[str, Any]:
    """Move `alias` (production) of every exposed user to the winning variant's version, then stop the
    experiment with decision `promoted` and `reason` (default: the verdict). Without a winner (see
    `report`) this refuses unless `force_variant` names one.

    Users whose adapter has no such ref (e.g. no `candidate`) are skipped and listed as missing.
    Idempotent: a run cut short can be repeated, users already moved are left alone. Each move is one
    registry alias move, so `pstyle registry rollback adapter <user> production` undoes it per user.
    """
    experiments = ExperimentStore(store)
    exp = experiments.get(name)
    if force_variant is not None:
        variant = exp.variant(force_variant)
        verdict = f"forced: {variant.name}"
    else:
        rep = report(store, name, min_ratings=min_ratings)
        if rep["winner"] is None:
            raise ExperimentError(
                f"experiment {name!r} has no winner ({rep['verdict']}): "
                "name a variant (--variant) to promote anyway"
            )
        variant, verdict = exp.variant(rep["winner"]), rep["verdict"]
    moved: dict[str, list[int | None]] = {}
    unchanged: list[str] = []
    missing: list[str] = []
    for user in exposed_users(store, name):
        try:
            target = registry.resolve("adapter", user, variant.ref).number
        except RegistryError:
            missing.append(user)
            continue
        current = registry.aliases("adapter", user).get(alias)
        if current == target:
            unchanged.append(user)
            continue
        registry.set_alias("adapter", user, alias, target)
        moved[user] = [current, target]
    experiments.stop(name, decision=PROMOTED, reason=reason or verdict)
    return {
        "experiment": name,
        "variant": variant.name,
        "ref": variant.ref,
        "alias": alias,
        "verdict": verdict,
        "users": len(moved) + len(unchanged) + len(missing),
        "moved": len(moved),
        "unchanged": len(unchanged),
        "missing": len(missing),
        "moved_users": moved,
        "missing_users": missing,
    }

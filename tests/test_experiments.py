"""A/B experiments: validation, sticky weighted assignment, storage, reports from events, promotion."""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from scipy import stats

from pstyle.cli.main import cli
from pstyle.serving.api_keys import ApiKeys
from pstyle.serving.experiments import (
    Experiment,
    ExperimentError,
    ExperimentStore,
    Variant,
    assign,
    format_report,
    promote,
    report,
)
from pstyle.store import LocalStore, Store, StoreError
from pstyle.store.events import EventLog
from pstyle.store.registry import Registry

USERS = [f"user{i:04d}" for i in range(2000)]


def ab(
    name: str = "exp1", percent: float = 100.0, users: list[str] | None = None, **weights: float
) -> Experiment:
    weights = weights or {"control": 50, "treatment": 50}
    refs = {"control": "production", "treatment": "candidate"}
    variants = tuple(Variant(n, refs.get(n, "production"), w) for n, w in weights.items())
    return Experiment(name, variants, percent=percent, users=users)


# ---- definition and assignment -------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Experiment("exp", (Variant("a", "production"),)), "at least 2 variants"),
        (lambda: Experiment("exp", (Variant("a", "production"),) * 2), "distinct"),
        (lambda: ab(percent=0), "percent"),
        (lambda: ab(percent=100.5), "percent"),
        (lambda: ab(name="../x"), "invalid experiment name"),
        (lambda: ab(users=["alice", "../bob"]), "invalid user id"),
        (lambda: Variant("a", "production", 0), "weight"),
        (lambda: Variant("a", "production", -1), "weight"),
        (lambda: Variant("a", "production", math.nan), "weight"),
        (lambda: Variant("a/b", "production"), "invalid variant name"),
        (lambda: Variant("a", "prod/../x"), "invalid adapter ref"),
        (lambda: Experiment("exp", ab().variants, status="paused"), "status"),
    ],
)
def test_invalid_definitions_are_refused(make, match: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        make()


def test_split_follows_weights_and_is_sticky() -> None:
    exp = ab(a=50, b=30, c=20)
    counts = Counter(assign(exp, u).name for u in USERS)
    for name, weight in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert abs(counts[name] / len(USERS) - weight) < 0.05, counts
    again = Experiment.from_dict(exp.to_dict())
    assert again == exp
    posted = {"name": "new", "variants": [{"name": "a", "ref": "production"}, {"name": "b", "ref": 3}]}
    assert abs(Experiment.from_dict(posted).created - time.time()) < 60  # e.g. from an admin API
    assert all(assign(again, u) == assign(exp, u) for u in USERS)
    # Independent of other experiments: the same users split differently in another one.
    other = ab(name="exp2", a=50, b=30, c=20)
    assert sum(assign(other, u) != assign(exp, u) for u in USERS) > 500


def test_percent_cohort_and_user_list() -> None:
    exp = ab(percent=30)
    inside = [u for u in USERS if assign(exp, u) is not None]
    assert abs(len(inside) / len(USERS) - 0.30) < 0.05
    # Raising the share only adds users, with the same variants.
    wider = ab(percent=60)
    assert all(assign(wider, u) == assign(exp, u) for u in inside)
    listed = ab(users=["alice", "bob"])
    assert assign(listed, "carol") is None and assign(listed, "alice") is not None


# ---- storage -------------------------------------------------------------------------------------


def test_create_get_list_stop(store: Store) -> None:
    experiments = ExperimentStore(store)
    exp = experiments.create(ab(percent=40, users=USERS[:200]))
    with pytest.raises(ExperimentError, match="already exists"):
        experiments.create(ab())
    experiments.create(ab(name="exp2", a=1, b=3))
    fresh = ExperimentStore(store)
    assert fresh.get("exp1") == exp
    assert [e.name for e in fresh.list()] == ["exp1", "exp2"]
    # Sticky across fresh store instances (e.g. replicas).
    loaded = fresh.get("exp1")
    assert [assign(loaded, u) for u in USERS[:200]] == [assign(exp, u) for u in USERS[:200]]
    with pytest.raises(ExperimentError, match="no experiment"):
        fresh.get("nope")

    in_exp1 = next(u for u in USERS[:200] if assign(exp, u) is not None)
    not_listed = USERS[500]
    assert [e.name for e in fresh.active_for(in_exp1)] == ["exp1", "exp2"]
    assert [e.name for e in fresh.active_for(not_listed)] == ["exp2"]
    ExperimentStore(store).stop("exp2")  # another instance: this one's cached list is still fresh
    assert [e.name for e in fresh.active_for(not_listed)] == ["exp2"]
    fresh.stop("exp1")  # its own stop invalidates its cache
    assert fresh.active_for(in_exp1) == [] and fresh.get("exp1").status == "stopped"
    assert ExperimentStore(store, cache_ttl_s=0).active_for(not_listed) == []
    with pytest.raises(ValueError, match="invalid user id"):
        fresh.active_for("../x")


def test_active_for_serves_the_last_list_while_the_store_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store")
    experiments = ExperimentStore(store, cache_ttl_s=0, max_stale_s=60)
    experiments.create(ab())
    assert [e.name for e in experiments.active_for("alice")] == ["exp1"]

    def broken(prefix: str = "") -> None:
        raise StoreError("S3 is down")

    monkeypatch.setattr(store, "list", broken)
    assert [e.name for e in experiments.active_for("alice")] == ["exp1"]
    with pytest.raises(StoreError):
        ExperimentStore(store).active_for("alice")  # nothing to fall back on


# ---- report --------------------------------------------------------------------------------------

LOW = [2, 3, 3, 4, 3] * 8  # 40 ratings, mean 3.0
HIGH = [4, 4, 5, 3, 4] * 8  # 40 ratings, mean 4.0


def log_events(store: Store, exp: str, ratings: dict[str, list[int]], exposures: int = 3) -> None:
    with EventLog(store, batch_size=10_000, flush_interval_s=3600) as log:
        for variant, values in ratings.items():
            for i, rating in enumerate(values):
                user = f"{variant}{i % 10}"
                for j in range(exposures):
                    log.append(
                        "exposure", user, experiment=exp, variant=variant, latency_ms=10.0 + j, error=j == 0
                    )
                log.append("feedback", user, experiment=exp, variant=variant, rating=rating)
        log.append("exposure", "zed", experiment="other", variant="treatment", latency_ms=1e6, error=True)
        log.append("feedback", "zed", experiment=exp, variant="nonexistent", rating=5)


def test_report_finds_the_better_variant(store: Store) -> None:
    ExperimentStore(store).create(ab())
    log_events(store, "exp1", {"control": LOW, "treatment": HIGH})
    rep = report(store, "exp1")
    control, treatment = rep["variants"]["control"], rep["variants"]["treatment"]
    assert control["exposures"] == 120 and control["users"] == 10 and control["errors"] == 40
    assert control["latency_ms_mean"] == pytest.approx(11.0) and control["error_rate"] == pytest.approx(1 / 3)
    assert (control["ratings"], treatment["ratings"]) == (40, 40)
    assert control["rating_mean"] == pytest.approx(3.0) and treatment["rating_mean"] == pytest.approx(4.0)
    half = stats.t.ppf(0.975, 39) * stats.tstd(HIGH) / math.sqrt(40)
    assert treatment["rating_ci95"] == pytest.approx([4.0 - half, 4.0 + half])
    expected = stats.ttest_ind(LOW, HIGH, equal_var=False)
    assert rep["test"]["p_value"] == pytest.approx(expected.pvalue) and rep["test"]["p_value"] < 0.05
    assert rep["winner"] == "treatment" and rep["verdict"] == "winner: treatment"
    assert rep["ignored_events"] == 1  # the rating of a variant the experiment does not have
    table = format_report(rep)
    assert "treatment" in table and "verdict: winner: treatment" in table


def test_report_without_a_difference_or_enough_data(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ExperimentStore(store).create(ab())
    ExperimentStore(store).create(ab(name="exp2"))
    ExperimentStore(store).create(ab(name="exp3"))
    same = [1, 2, 3, 4, 5] * 8
    log_events(store, "exp1", {"control": same, "treatment": same}, exposures=1)
    log_events(store, "exp2", {"control": LOW[:10], "treatment": HIGH[:10]}, exposures=1)
    rep = report(store, "exp1")
    assert rep["winner"] is None and rep["verdict"] == "no significant difference yet"
    assert rep["test"]["p_value"] == pytest.approx(1.0)
    assert report(store, "exp2")["verdict"] == "not enough data"
    assert report(store, "exp2", min_ratings=10)["verdict"] == "winner: treatment"
    empty = report(store, "exp3")
    assert empty["verdict"] == "not enough data" and empty["variants"]["control"]["exposures"] == 0
    assert "verdict: not enough data" in format_report(empty)


# ---- promote -------------------------------------------------------------------------------------


def test_promote_moves_exposed_users_to_the_winner(store: Store, tmp_path: Path, make_adapter) -> None:  # noqa: ANN001
    registry = Registry(store)
    for user in ("alice", "bob", "dave", "erin"):
        directory = make_adapter(tmp_path / user, user)
        registry.publish_adapter(user, directory, aliases=["production"])  # v1
        if user != "dave":  # dave has no candidate
            registry.publish_adapter(user, directory, aliases=["candidate"])  # v2
    ExperimentStore(store).create(ab())
    with EventLog(store) as log:
        for user, variant in (("alice", "control"), ("bob", "treatment"), ("dave", "treatment")):
            log.append("exposure", user, experiment="exp1", variant=variant, latency_ms=5.0, error=False)
        for i, (low, high) in enumerate(zip(LOW, HIGH, strict=True)):
            user = ("alice", "bob", "dave")[i % 3]
            log.append("feedback", user, experiment="exp1", variant="control", rating=low)
            log.append("feedback", user, experiment="exp1", variant="treatment", rating=high)

    with pytest.raises(ExperimentError, match="no winner"):
        promote(store, registry, "exp1", min_ratings=1000)
    result = promote(store, registry, "exp1")
    assert result["variant"] == "treatment" and result["ref"] == "candidate"
    assert (result["moved"], result["unchanged"], result["missing"]) == (2, 0, 1)
    assert result["moved_users"] == {"alice": [1, 2], "bob": [1, 2]} and result["missing_users"] == ["dave"]
    production = {u: registry.aliases("adapter", u)["production"] for u in ("alice", "bob", "dave", "erin")}
    assert production == {"alice": 2, "bob": 2, "dave": 1, "erin": 1}  # erin was never exposed
    assert ExperimentStore(store).get("exp1").status == "stopped"
    assert registry.rollback("adapter", "alice", "production") == 1  # undoable per user

    again = promote(store, registry, "exp1", force_variant="treatment")
    assert (again["moved"], again["unchanged"], again["missing"]) == (1, 1, 1)  # alice (rolled back), bob
    with pytest.raises(ExperimentError, match="no variant"):
        promote(store, registry, "exp1", force_variant="nope")


# ---- CLI -----------------------------------------------------------------------------------------


def test_cli_users_and_ab(tmp_path: Path) -> None:
    store_dir = str(tmp_path / "store")

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, [*args, "--store", store_dir], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    key = run("users", "create", "alice").strip()
    from pstyle.store import open_store

    store = open_store(store_dir)
    assert ApiKeys(store).authenticate(key).user_id == "alice"
    with pytest.raises(ValueError, match="already has an API key"):
        run("users", "create", "alice")
    new = run("users", "create", "alice", "--rotate", "--admin").strip()
    assert new != key and ApiKeys(store).authenticate(new).admin

    out = run(
        "ab", "create", "exp1", "--variant", "control=production:50", "--variant", "treatment=candidate:50"
    )
    assert "control=production:50" in out
    run(
        "ab",
        "create",
        "exp2",
        "--variant",
        "a=production",
        "--variant",
        "b=3:2",
        "--percent",
        "10",
        "--cohort",
        "x,y",
    )
    listing = run("ab", "list")
    assert "exp1" in listing and "running" in listing and "2 users" in listing
    log_events(store, "exp1", {"control": LOW, "treatment": HIGH}, exposures=1)
    assert "verdict: winner: treatment" in run("ab", "report", "exp1")
    assert '"winner": "treatment"' in run("ab", "report", "exp1", "--json")
    assert "stopped" in run("ab", "stop", "exp2")
    with pytest.raises(ValueError, match="name=ref"):
        run("ab", "create", "exp3", "--variant", "control", "--variant", "b=x")
    out = run("ab", "promote", "exp1")
    assert "promoted treatment (candidate)" in out and "0 users moved" in out  # no adapters published
    assert "revoked alice" in run("users", "revoke", "alice")

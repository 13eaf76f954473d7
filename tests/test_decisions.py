"""`decide`: promotion, rollback and waiting on synthetic event logs; alpha spending; the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures.ab import HIGH, LOW
from fixtures.ab import traffic as simulate
from fixtures.cli import run_pstyle

from pstyle.config import DecideConfig
from pstyle.serving.decisions import boundaries, decide, read_looks, spent
from pstyle.serving.experiments import Experiment, ExperimentStore, Variant
from pstyle.store import LocalStore, Store
from pstyle.store.registry import Registry

USERS = ["ann", "ben", "cat", "dan"]
CFG = DecideConfig(min_ratings=30, planned_ratings=200, min_exposures=40)


def setup_store(tmp_path: Path, name: str = "exp") -> Store:
    """Each user has v1 (production) and v2 (candidate); `name` tests production vs candidate."""
    store = LocalStore(tmp_path / "store")
    registry = Registry(store)
    files = tmp_path / "adapter"
    files.mkdir()
    (files / "adapter.safetensors").write_bytes(b"weights")
    (files / "adapter.json").write_text("{}")
    for user in USERS:
        registry.publish("adapter", user, files, aliases=["production"])
        registry.publish("adapter", user, files, aliases=["candidate"])
    variants = (Variant("production", "production"), Variant("candidate", "candidate"))
    ExperimentStore(store).create(Experiment(name, variants, users=tuple(USERS)))
    return store


def traffic(store: Store, ratings: dict[str, list[int]], name: str = "exp", **options: Any) -> None:
    simulate(store, ratings, USERS, name, **options)


def aliases(store: Store) -> dict[str, dict[str, int]]:
    return {user: Registry(store).aliases("adapter", user) for user in USERS}


def test_favourable_ratings_promote_the_candidate(tmp_path: Path) -> None:
    store = setup_store(tmp_path)
    traffic(store, {"production": LOW, "candidate": HIGH})
    [decision] = decide(store, CFG)
    assert decision.action == "promoted" and "look 1" in decision.reason, decision.line()
    assert aliases(store) == {u: {"production": 2, "candidate": 2} for u in USERS}
    exp = ExperimentStore(store).get("exp")
    assert (exp.status, exp.decision) == ("stopped", "promoted") and "better" in exp.reason
    [look] = read_looks(store, "exp")
    assert look["fraction"] == 60 / 200 and look["z"] >= look["boundary"] > 3
    assert decide(store, CFG) == []  # nothing running any more


def test_unfavourable_ratings_roll_back(tmp_path: Path) -> None:
    store = setup_store(tmp_path)
    traffic(store, {"production": HIGH, "candidate": LOW})
    [decision] = decide(store, CFG)
    assert decision.action == "rolled_back" and "worse" in decision.reason, decision.line()
    # production untouched; candidate points back at production's version (history keeps v2)
    assert aliases(store) == {u: {"production": 1, "candidate": 1} for u in USERS}
    assert Registry(store).alias_history("adapter", "ann", "candidate") == [2, 1]
    exp = ExperimentStore(store).get("exp")
    assert (exp.status, exp.decision) == ("stopped", "rolled_back") and exp.reason == decision.reason.split(
        ";"
    )[0]


@pytest.mark.parametrize(
    "errors, latency, needle",
    [
        ({"candidate": 0.2}, None, "error rate 20.0% vs production's 0.0%"),
        (None, {"production": 50.0, "candidate": 90.0}, "p99 latency"),
    ],
)
def test_a_broken_guardrail_rolls_back_even_with_better_ratings(tmp_path, errors, latency, needle) -> None:  # noqa: ANN001
    store = setup_store(tmp_path)
    traffic(store, {"production": LOW, "candidate": HIGH}, errors=errors, latency=latency)
    [decision] = decide(store, CFG)
    assert decision.action == "rolled_back" and needle in decision.reason, decision.line()
    assert read_looks(store, "exp") == []  # no rating test, no alpha spent


def test_waits_for_data_and_for_the_guardrails(tmp_path: Path) -> None:
    store = setup_store(tmp_path)
    traffic(store, {"production": LOW[:10], "candidate": HIGH[:10]}, exposures=10)
    [decision] = decide(store, CFG)
    assert decision.action == "continue" and "not enough data: 10/30" in decision.reason
    traffic(store, {"production": LOW[10:], "candidate": HIGH[10:]}, exposures=10)  # 60 ratings, 20 exposures
    [decision] = decide(store, CFG)
    assert decision.action == "continue" and "guardrails wait" in decision.reason, decision.line()
    assert ExperimentStore(store).get("exp").status == "running" and aliases(store)["ann"]["production"] == 1
    [decision] = decide(store, CFG)  # the same data again: no new look, no alpha spent
    assert "no new information since look 1" in decision.reason and len(read_looks(store, "exp")) == 1


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    store = setup_store(tmp_path)
    traffic(store, {"production": LOW, "candidate": HIGH})
    [decision] = decide(store, CFG, dry_run=True)
    assert decision.action == "promoted" and decision.line().startswith("[dry run] exp: promoted")
    assert ExperimentStore(store).get("exp").status == "running" and read_looks(store, "exp") == []
    assert aliases(store)["ann"] == {"production": 1, "candidate": 2}


def test_early_looks_need_more_evidence_than_the_final_one(tmp_path: Path) -> None:
    """Alpha spending: the same moderate lead waits at an early look and wins at the final one."""
    c = boundaries([0.25, 0.5, 0.75, 1.0], 0.05)
    assert c == sorted(c, reverse=True) and c[0] > 3.9 and 1.96 < c[-1] < 2.1
    assert boundaries([1.0], 0.05) == pytest.approx([1.959964], abs=1e-5)  # one look: the plain test
    store = setup_store(tmp_path)
    traffic(store, {"production": [3, 4] * 30, "candidate": [3, 4, 4, 4] * 15})  # 3.50 vs 3.75
    [early] = decide(store, CFG)  # t = 0.3
    assert early.action == "continue" and 2.5 < early.look["z"] < early.look["boundary"], early.line()
    [final] = decide(store, DecideConfig(min_ratings=30, planned_ratings=60, min_exposures=40))  # t = 1
    assert final.action == "promoted" and final.look["boundary"] < final.look["z"], final.line()
    assert [look["fraction"] for look in read_looks(store, "exp")] == [0.3, 1.0]


def test_boundaries_spend_exactly_each_increment() -> None:
    """Simulated z paths under no difference cross first at each look as often as its increment."""
    fractions = [0.2, 0.45, 0.7, 1.0]
    c = np.array(boundaries(fractions, 0.05))
    steps = np.random.default_rng(0).standard_normal((400_000, 4)) * np.sqrt(np.diff([0.0, *fractions]))
    z = np.abs(np.cumsum(steps, axis=1)) / np.sqrt(fractions)
    crossed = z >= c
    first = np.where(crossed.any(axis=1), crossed.argmax(axis=1), -1)
    increments = np.diff([0.0, *(spent(t, 0.05) for t in fractions)])
    assert np.allclose([np.mean(first == k) for k in range(4)], increments, atol=1e-3)
    assert np.mean(first >= 0) == pytest.approx(0.05, abs=2e-3)


def test_no_difference_at_the_final_look_keeps_production(tmp_path: Path) -> None:
    store = setup_store(tmp_path)
    traffic(store, {"production": LOW, "candidate": LOW})
    [decision] = decide(store, DecideConfig(min_ratings=30, planned_ratings=60, min_exposures=40))
    assert decision.action == "rolled_back" and "no significant difference at the final" in decision.reason


def test_cli_one_line_per_experiment_and_one_line_errors(tmp_path: Path) -> None:
    store = setup_store(tmp_path)
    ExperimentStore(store).create(Experiment("three", tuple(Variant(n, "production") for n in "abc")))
    traffic(store, {"production": HIGH, "candidate": LOW})

    def pstyle(*args: str) -> tuple[int, str, str]:
        return run_pstyle("ab", "decide", "--store", store.root, *args)

    code, out, _ = pstyle(
        "--dry-run", "--min-ratings", "30", "--planned-ratings", "200", "--min-exposures", "40"
    )
    assert code == 0 and out.splitlines()[0].startswith("[dry run] exp: rolled back: worse")
    assert out.splitlines()[1].startswith("[dry run] three: skipped: not one production variant")
    code, out, _ = pstyle("--experiment", "exp", "--min-exposures", "40")
    assert code == 0 and out.startswith("exp: rolled back: worse") and len(out.splitlines()) == 1
    assert "exp: skipped: stopped (rolled back: worse" in pstyle("--experiment", "exp")[1]
    for args, needle in [(["--experiment", "nope"], "no experiment 'nope'"), (["--alpha", "2"], "alpha")]:
        code, out, err = pstyle(*args)
        assert code == 1 and not out and len(err.strip().splitlines()) == 1 and needle in err, err

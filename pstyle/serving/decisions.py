"""Acting on A/B experiments of adapter versions: promote the candidate, roll it back, or let it run.

An experiment qualifies when it has two variants, a control serving `production` and a candidate
serving anything else (normally the `candidate` alias). Each `decide` is one *look* at its events:

- Guardrails, judged once both arms have `min_exposures` exposures: the candidate's error rate may
  exceed production's by `error_margin` (absolute) and its p99 latency by `p99_margin` (relative).
  A breach rolls the candidate back at once; a promotion waits until they have been judged.
- Ratings, tested once both arms have `min_ratings`: Welch's t-test of candidate against production,
  expressed as the z with the same two-sided p-value, against the look's boundary c. z >= c promotes,
  z <= -c rolls back. The final look (information fraction 1) always decides: no significant
  difference there rolls back too, since the candidate did not show it is better.

Repeated looks: alpha spending (Lan & DeMets 1983) with the O'Brien-Fleming-type function

    spent(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)),   t = min(ratings per arm) / planned_ratings (<= 1)

so the chance of a wrong promotion or rollback over all looks together stays within `alpha` however
often `decide` runs. Early looks need overwhelming evidence (a first look at t = 0.25 needs |z| >= 3.9
with alpha 0.05), the final one about 2.0. The fractions of the looks taken so far are kept in the store
(`experiments/<name>/looks.json`), and look k spends only its increment spent(t_k) - spent(t_k-1):
its boundary is exact for that sequence of looks, the value at which the chance of z first leaving
(-c, c) at look k, with no true difference, equals the increment (the z values are a Brownian motion
seen at t_1..t_k; the chance is integrated numerically on a grid, Jennison & Turnbull 2000, ch. 19).
A look must add LOOK_STEP of information; a fraction within LOOK_STEP of 1 is the final look.

Rollback, precisely: the experiment is stopped with decision `rolled_back` and the reason, so every
replica serves its users production again (within the replicas' experiment-cache TTL). No `production`
alias moves: production never served the candidate. When the candidate variant is an alias (normally
`candidate`), each cohort user's alias is moved back to their production version, one logged alias
move (`pstyle registry rollback adapter USER candidate` undoes it), so no later experiment that names
the alias serves the rejected version again; a user without a production version keeps theirs. The
cohort is the experiment's user list, or every exposed user for an experiment open to everybody.
Promotion is `experiments.promote` of the candidate: every exposed user's production moves to it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pstyle.config import DecideConfig
from pstyle.ids import validate_id
from pstyle.serving.experiments import (
    PREFIX,
    PROMOTED,
    ROLLED_BACK,
    VERSION,
    Arm,
    Experiment,
    ExperimentStore,
    Variant,
    arms,
    compare,
    exposed_users,
    promote,
)
from pstyle.store import KeyNotFound, Store
from pstyle.store.registry import PRODUCTION_ALIAS, Registry

CONTINUE, SKIPPED = "continue", "skipped"
WORDS = {PROMOTED: "promoted", ROLLED_BACK: "rolled back", CONTINUE: "continue", SKIPPED: "skipped"}
LOOK_STEP = 0.01  # information a look must add to the previous one
GRID_PER_SD = 8  # grid points per standard deviation of the smallest step between looks
GRID_SPAN_SD = 8.0  # how far (in sds of B at the look) the grid reaches where no boundary cuts it


@dataclass(frozen=True)
class Decision:
    experiment: str
    action: str  # promoted | rolled_back | continue | skipped
    reason: str
    look: dict[str, Any] | None = None  # the look's fraction, z, boundary, ratings per arm
    detail: dict[str, Any] = field(default_factory=dict)  # what promote/rollback did
    dry_run: bool = False

    def line(self) -> str:
        prefix = "[dry run] " if self.dry_run else ""
        return f"{prefix}{self.experiment}: {WORDS[self.action]}: {self.reason}"


# ---- alpha spending --------------------------------------------------------------------------------


def spent(t: float, alpha: float) -> float:
    """Alpha spent by information fraction t: the O'Brien-Fleming-type Lan-DeMets function."""
    from scipy.stats import norm

    return 0.0 if t <= 0 else float(2 * norm.sf(norm.isf(alpha / 2) / math.sqrt(min(t, 1.0))))


def boundaries(fractions: Sequence[float], alpha: float) -> list[float]:
    """Two-sided z boundaries c_1..c_k of looks at increasing fractions in (0, 1]: with no true
    difference, the chance that |z| first reaches c_j at look j is spent(t_j) - spent(t_j-1).

    Works on B = z sqrt(t), which has independent Gaussian increments of variance t_j - t_j-1: the
    density of B over the paths still running is carried from look to look on a grid (trapezoid
    rule), and the chance of crossing at the next look is integrated against it in closed form."""
    import numpy as np
    from scipy import optimize
    from scipy.stats import norm

    steps = np.diff([0.0, *fractions])
    if len(steps) == 0 or (steps <= 0).any() or fractions[-1] > 1:
        raise ValueError(f"look fractions must increase within (0, 1], got {list(fractions)}")
    spacing = math.sqrt(steps[1:].min() if len(steps) > 1 else steps[0]) / GRID_PER_SD
    nodes = mass = None  # grid over B and the probability mass each node carries
    out: list[float] = []
    for t, step in zip(fractions, steps, strict=True):
        sd = math.sqrt(step)
        increment = spent(t, alpha) - spent(t - step, alpha)
        top = (0.0 if nodes is None else float(np.abs(nodes).max())) + 40 * sd  # nothing crosses there
        h = math.inf
        if increment > 0:
            h = optimize.brentq(lambda h: _crossing(h, nodes, mass, sd) - increment, 0.0, top)  # noqa: B023
        out.append(h / math.sqrt(t))
        reach = min(h, GRID_SPAN_SD * math.sqrt(t))
        grid = np.linspace(-reach, reach, max(3, math.ceil(2 * reach / spacing) + 1))
        if nodes is None:
            density = norm.pdf(grid / sd) / sd
        else:
            density = norm.pdf((grid[:, None] - nodes[None, :]) / sd) @ mass / sd
        weights = np.full(len(grid), grid[1] - grid[0])
        weights[[0, -1]] /= 2
        nodes, mass = grid, density * weights
    return out


def _crossing(h: float, nodes: Any, mass: Any, sd: float) -> float:
    """P(|B_k| >= h, still running before): B_k = a node plus a N(0, sd^2) step (mass None: B_0 = 0)."""
    from scipy.stats import norm

    if nodes is None:
        return float(2 * norm.sf(h / sd))
    return float(mass @ (norm.sf((h - nodes) / sd) + norm.cdf((-h - nodes) / sd)))


def looks_key(name: str) -> str:
    return f"{PREFIX}/{validate_id(name, 'experiment name')}/looks.json"


def read_looks(store: Store, name: str) -> list[dict[str, Any]]:
    """The looks recorded for experiment `name`, oldest first (its fractions fix later boundaries)."""
    try:
        return json.loads(store.get_bytes(looks_key(name)))
    except KeyNotFound:
        return []


def _record_look(store: Store, name: str, look: dict[str, Any]) -> None:
    looks = read_looks(store, name)
    if not looks or look["fraction"] > looks[-1]["fraction"]:  # a concurrent decide took it already
        store.put_bytes(looks_key(name), json.dumps([*looks, look], indent=1).encode())


# ---- one experiment --------------------------------------------------------------------------------


def _pair(exp: Experiment) -> tuple[Variant, Variant] | None:
    """(control, candidate) of a production-vs-candidate experiment, else None."""
    controls = [v for v in exp.variants if v.ref == PRODUCTION_ALIAS]
    if len(exp.variants) != 2 or len(controls) != 1:
        return None
    control = controls[0]
    return control, next(v for v in exp.variants if v is not control)


def _breach(control: Arm, candidate: Arm, cfg: DecideConfig) -> str | None:
    """The first guardrail the candidate breaks, in words, or None."""
    c_rate, x_rate = control.error_rate or 0.0, candidate.error_rate or 0.0
    if x_rate > c_rate + cfg.error_margin:
        return f"error rate {x_rate:.1%} vs production's {c_rate:.1%} (margin {cfg.error_margin:.1%})"
    c_p99, x_p99 = control.latency_ms(99), candidate.latency_ms(99)
    if c_p99 is not None and x_p99 is not None and x_p99 > c_p99 * (1 + cfg.p99_margin):
        return f"p99 latency {x_p99:.0f} ms vs production's {c_p99:.0f} ms (margin {cfg.p99_margin:.0%})"
    return None


def _z(candidate: Sequence[float], control: Sequence[float]) -> float:
    """Welch's two-sided p-value as a signed standard-normal quantile (> 0: the candidate rates higher)."""
    from scipy.stats import norm

    test = compare(candidate, control)
    return (
        math.copysign(float(norm.isf(test["p_value"] / 2)), test["mean_diff"]) if test["mean_diff"] else 0.0
    )


def _judge(store: Store, exp: Experiment, cfg: DecideConfig) -> Decision:
    """What the data says now (nothing is changed)."""
    pair = _pair(exp)
    if pair is None:
        return Decision(exp.name, SKIPPED, f"not one {PRODUCTION_ALIAS} variant against one candidate")
    if exp.status != "running":
        said = f"{WORDS.get(exp.decision, exp.decision)}: {exp.reason}" if exp.decision else "no decision"
        return Decision(exp.name, SKIPPED, f"stopped ({said})")
    samples, _ = arms(store, exp)
    control, candidate = samples[pair[0].name], samples[pair[1].name]
    judged = min(control.exposures, candidate.exposures) >= cfg.min_exposures
    breach = _breach(control, candidate, cfg) if judged else None
    if breach is not None:
        return Decision(exp.name, ROLLED_BACK, f"guardrail broken: {breach}")
    n = min(len(control.ratings), len(candidate.ratings))
    if n < cfg.min_ratings:
        return Decision(
            exp.name, CONTINUE, f"not enough data: {n}/{cfg.min_ratings} ratings on the smaller arm"
        )
    looks = read_looks(store, exp.name)
    last = looks[-1]["fraction"] if looks else 0.0
    fraction = 1.0 if n >= (1 - LOOK_STEP) * cfg.planned_ratings else n / cfg.planned_ratings
    if fraction < last + LOOK_STEP:
        return Decision(exp.name, CONTINUE, f"no new information since look {len(looks)} ({n} per arm)")
    c = boundaries([*(look["fraction"] for look in looks), fraction], cfg.alpha)[-1]
    look = {
        "look": len(looks) + 1,
        "fraction": fraction,
        "ratings": [len(control.ratings), len(candidate.ratings)],
        "z": _z(candidate.ratings, control.ratings),
        "boundary": c,
        "alpha_spent": spent(fraction, cfg.alpha),
    }
    return Decision(exp.name, *_verdict(look, control, candidate, judged), look)


def _verdict(look: dict[str, Any], control: Arm, candidate: Arm, judged: bool) -> tuple[str, str]:
    """(action, reason) of a look's rating test."""
    z, c, k = look["z"], look["boundary"], look["look"]
    means = f"mean rating {_mean(candidate):.2f} vs {_mean(control):.2f}"
    where = f"look {k} (t={look['fraction']:.2f}, alpha spent {look['alpha_spent']:.4f})"
    if z >= c and not judged:
        return CONTINUE, f"ahead at {where}: {means}, z={z:.2f} >= {c:.2f}; guardrails wait for exposures"
    if z >= c:
        return PROMOTED, f"better at {where}: {means}, z={z:.2f} >= {c:.2f}; guardrails hold"
    if z <= -c:
        return ROLLED_BACK, f"worse at {where}: {means}, z={z:.2f} <= -{c:.2f}"
    if look["fraction"] >= 1:
        return (
            ROLLED_BACK,
            f"no significant difference at the final {where}: {means}, |z|={abs(z):.2f} < {c:.2f}",
        )
    return CONTINUE, f"undecided at {where}: {means}, |z|={abs(z):.2f} < {c:.2f}"


def _mean(arm: Arm) -> float:
    return sum(arm.ratings) / len(arm.ratings)


def rollback(
    store: Store, registry: Registry, exp: Experiment, candidate: Variant, reason: str
) -> dict[str, Any]:
    """Stop `exp` as rolled back and move each cohort user's `candidate.ref` alias back to their
    production version (see the module docstring); returns the moves."""
    moved: dict[str, list[int]] = {}
    kept: list[str] = []
    if not VERSION.fullmatch(candidate.ref):  # an alias: a version number has nothing to move back
        cohort = exp.users if exp.users is not None else exposed_users(store, exp.name)
        for user in cohort:
            aliases = registry.aliases("adapter", user)
            production, current = aliases.get(PRODUCTION_ALIAS), aliases.get(candidate.ref)
            if current is None or current == production:
                continue
            if production is None:
                kept.append(user)
                continue
            registry.set_alias("adapter", user, candidate.ref, production)
            moved[user] = [current, production]
    ExperimentStore(store).stop(exp.name, decision=ROLLED_BACK, reason=reason)
    return {"alias": candidate.ref, "moved": len(moved), "moved_users": moved, "kept_users": kept}


def _act(store: Store, registry: Registry, exp: Experiment, verdict: Decision) -> Decision:
    """Carry out the verdict, then record its look (after acting: a run cut short between the two
    takes the same look again, and promote/rollback are idempotent)."""
    pair = _pair(exp)
    detail: dict[str, Any] = {}
    if verdict.action == PROMOTED and pair is not None:
        detail = promote(store, registry, exp.name, force_variant=pair[1].name, reason=verdict.reason)
        verdict = Decision(
            exp.name, PROMOTED, f"{verdict.reason}; {detail['moved']} users moved", verdict.look, detail
        )
    elif verdict.action == ROLLED_BACK and pair is not None:
        detail = rollback(store, registry, exp, pair[1], verdict.reason)
        note = f"; {detail['alias']} moved back for {detail['moved']} users" if detail["moved"] else ""
        verdict = Decision(exp.name, ROLLED_BACK, verdict.reason + note, verdict.look, detail)
    if verdict.look is not None:
        _record_look(store, exp.name, verdict.look)
    return verdict


def decide(
    store: Store, cfg: DecideConfig | None = None, name: str | None = None, dry_run: bool = False
) -> list[Decision]:
    """Judge experiment `name` (default: every running one) and act on each verdict; `dry_run` only
    says what would be done (no action, no look recorded, so no alpha is spent)."""
    cfg = cfg or DecideConfig()
    experiments = ExperimentStore(store)
    chosen = (
        [experiments.get(name)]
        if name is not None
        else [e for e in experiments.list() if e.status == "running"]
    )
    registry = Registry(store)
    out = []
    for exp in chosen:
        verdict = _judge(store, exp, cfg)
        if dry_run:
            out.append(
                Decision(verdict.experiment, verdict.action, verdict.reason, verdict.look, dry_run=True)
            )
        else:
            out.append(_act(store, registry, exp, verdict))
    return out

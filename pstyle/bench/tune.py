"""`pstyle bench tune`: what ASHA early stopping saves, and how many trials an hour this machine runs.

The same seeded random search (identical trial configurations, identical training seeds) runs
twice: without early stopping, then with ASHA on the scalarised score. The reference is the best
final score of the run without early stopping; a configuration is "within target" when it finishes
its full budget with a score within 5 % of that reference (score <= 1.05 x best; scores are
positive). Two savings, each in trial-iterations (every report of every trial):

- search: what each whole search consumed to give its answer, none / ASHA, counted only when
  ASHA's answer (its best full-budget trial) is within target: the compute early stopping saves a
  search that still finds a configuration as good as the best.
- anytime: consumed, in wall-clock order, until the first within-target trial finishes. It depends
  on where the good configurations fall in the (random) trial order, so the benchmark also replays
  both policies on the recorded learning curves of the no-early-stopping run (training is
  deterministic per configuration) over many random trial orders, one trial at a time, with Ray's
  own ASHA bracket deciding the stops: the order-averaged iterations to the first good one.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import torch

from pstyle.bench.common import machine_description
from pstyle.config import TuneConfig
from pstyle.distributed.runtime import ensure_ray

TOLERANCE = 0.05


def bench_config(
    trials: int,
    iterations: int,
    steps_per_iteration: int,
    image_size: int,
    seed: int,
    grace_period: int = TuneConfig.grace_period,
    reduction_factor: int = TuneConfig.reduction_factor,
) -> TuneConfig:
    """A search that fits in half an hour on 2 CPUs: 32 px, narrow models, random search over the
    default space (so good configurations are as rare as a user's search would find them)."""
    return TuneConfig().with_overrides({
        "name": "bench",
        "search": "random",
        "num_samples": trials,
        "iterations": iterations,
        "steps_per_iteration": steps_per_iteration,
        "grace_period": grace_period,
        "reduction_factor": reduction_factor,
        "seed": seed,
        "max_failures": 0,
        "base.train.image_size": image_size,
        "base.model.disc_channels": 8,
        "base.model.segmenter_channels": 4,
        "base.train.style_images": 2,
        "space.model.channels": {"choices": [8, 16]},
        "space.model.w_dim": {"choices": [16, 32]},
        "space.train.batch_size": {"choices": [4]},
    })  # fmt: skip


def report_events(grid: Any) -> list[dict[str, Any]]:
    """Every report of every trial (wall time, trial, iteration, score), in wall-clock order."""
    from pstyle.distributed.tune import trial_id

    events = []
    for result in grid:
        df = result.metrics_dataframe
        if df is None:
            continue
        tid = trial_id(result)
        for wall, it, sc in zip(df["wall_time"], df["training_iteration"], df["score"], strict=True):
            events.append(
                {"wall_time": float(wall), "trial_id": tid, "iteration": int(it), "score": float(sc)}
            )
    return sorted(events, key=lambda e: e["wall_time"])


def iterations_to_target(
    events: list[dict[str, Any]], target: float, iterations: int
) -> dict[str, Any] | None:
    """Trial-iterations consumed until a trial completes its full budget with score <= target."""
    for consumed, event in enumerate(events, start=1):
        if event["iteration"] >= iterations and event["score"] <= target:
            return {"iterations": consumed, "trial_id": event["trial_id"], "score": event["score"]}
    return None


def learning_curves(events: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per trial, its score at iterations 1, 2, ... (from a run where every trial ran them all)."""
    curves: dict[str, dict[int, float]] = {}
    for e in events:
        curves.setdefault(e["trial_id"], {})[e["iteration"]] = e["score"]
    return {tid: [c[i] for i in sorted(c)] for tid, c in curves.items()}


def replay(
    curves: dict[str, list[float]], order: list[str], target: float, iterations: int, bracket: Any
) -> int | None:
    """Trial-iterations until a trial completes with score <= target, running `order` one trial at a
    time; `bracket` (Ray's ASHA `_Bracket`) stops trials at its rungs, None = no early stopping."""
    consumed = 0
    for tid in order:
        for it, value in enumerate(curves[tid][:iterations], start=1):
            consumed += 1
            if it == iterations and value <= target:
                return consumed
            if bracket is not None and bracket.on_result(_Trial(tid), it, -value) == "STOP":
                break
    return None


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def replay_orders(
    curves: dict[str, list[float]], target: float, cfg: TuneConfig, orders: int = 2000
) -> dict[str, Any]:
    """Order-averaged iterations to target, without early stopping and with ASHA (same settings)."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    rng = random.Random(cfg.seed)
    ids = sorted(curves)
    none, asha = [], []
    for _ in range(orders):
        rng.shuffle(ids)
        none.append(replay(curves, ids, target, cfg.iterations, None))
        bracket = _Bracket(min(cfg.grace_period, cfg.iterations), cfg.iterations, cfg.reduction_factor, 0)
        asha.append(replay(curves, ids, target, cfg.iterations, bracket))
    reached = [a for a in asha if a is not None]
    out = {
        "orders": orders,
        "none_mean": sum(none) / len(none),
        "asha_mean": sum(reached) / len(reached) if reached else None,
        "asha_reach_rate": len(reached) / orders,
    }
    out["ratio"] = out["none_mean"] / out["asha_mean"] if reached else None
    return out


def run_bench_tune(
    cfg: TuneConfig, ray_address: str | None = "local", log: Callable[[str], None] = print
) -> dict:
    import ray

    from pstyle.distributed.tune import run_search

    started = not ray.is_initialized()
    ensure_ray(ray_address)
    try:
        runs: dict[str, dict[str, Any]] = {}
        for scheduler in ("none", "asha"):
            run_cfg = cfg.with_overrides({"name": f"{cfg.name}-{scheduler}", "scheduler": scheduler})
            t0 = time.perf_counter()
            summary = run_search(run_cfg, log=log)
            wall = time.perf_counter() - t0
            rows = summary["rows"]
            runs[scheduler] = {
                "wall_s": wall,
                "trials": len(rows),
                "trials_per_hour": len(rows) / wall * 3600,
                "stopped_early": sum(r["status"] == "stopped_early" for r in rows),
                "events": report_events(summary["grid"]),
                "rows": rows,
            }
    finally:
        if started:
            ray.shutdown()
    full = [r["score"] for r in runs["none"]["rows"] if r["status"] == "terminated"]
    best = min(full)
    target = best * (1 + TOLERANCE)
    for run in runs.values():
        run["total_iterations"] = len(run["events"])
        run["reached"] = iterations_to_target(run["events"], target, cfg.iterations)
        run["best_full_score"] = min(
            (r["score"] for r in run["rows"] if r["status"] == "terminated"), default=None
        )
    reached = [runs[k]["reached"] for k in ("none", "asha")]
    anytime = reached[0]["iterations"] / reached[1]["iterations"] if all(reached) else None
    asha_ok = runs["asha"]["best_full_score"] is not None and runs["asha"]["best_full_score"] <= target
    search = runs["none"]["total_iterations"] / runs["asha"]["total_iterations"] if asha_ok else None
    return {
        "benchmark": "tune",
        "machine": machine_description(torch.device("cpu")),
        "settings": {
            "trials": cfg.num_samples,
            "iterations": cfg.iterations,
            "steps_per_iteration": cfg.steps_per_iteration,
            "image_size": cfg.base.train.image_size,
            "grace_period": cfg.grace_period,
            "reduction_factor": cfg.reduction_factor,
            "ssim_weight": cfg.ssim_weight,
            "search": cfg.search,
            "seed": cfg.seed,
            "cpus_per_trial": cfg.cpus_per_trial,
        },
        "best_score": best,
        "target": target,
        "runs": runs,
        "asha_search_reaches_target": asha_ok,  # ASHA's best full-budget trial is within target
        "search_saving": search,  # whole-search iterations, none / ASHA (None: ASHA missed the target)
        "anytime_saving": anytime,  # iterations until the first within-target trial, none / ASHA (live)
        "replay": replay_orders(learning_curves(runs["none"]["events"]), target, cfg),
    }


def tune_table(result: dict) -> str:
    best, target = result["best_score"], result["target"]
    lines = [
        f"best full-budget score {best:.4f}; target <= {target:.4f} (+{TOLERANCE:.0%})",
        f"{'scheduler':<10}{'to 1st good':>16}{'total iters':>12}{'stopped':>8}{'wall s':>8}{'trials/h':>10}",
    ]
    for name, run in result["runs"].items():
        reached = run["reached"]["iterations"] if run["reached"] else "not reached"
        lines.append(
            f"{name:<10}{reached:>16}{run['total_iterations']:>12}{run['stopped_early']:>8}"
            f"{run['wall_s']:>8.0f}{run['trials_per_hour']:>10.0f}"
        )
    search, anytime, r = result["search_saving"], result["anytime_saving"], result["replay"]
    lines += [
        f"search: ASHA's answer is within target and its search used {search:.2f}x fewer trial-iterations"
        if search
        else "search: ASHA's best full-budget trial missed the target",
        f"anytime, live: {_fmt(anytime, 2)}x fewer trial-iterations until the first within-target trial",
        f"anytime, replayed over {r['orders']} random trial orders, one trial at a time: none "
        f"{r['none_mean']:.1f}, ASHA {_fmt(r['asha_mean'])} (reached in {r['asha_reach_rate']:.0%} of "
        f"orders), ratio {_fmt(r['ratio'], 2)}",
    ]
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "never" if value is None else f"{value:.{digits}f}"

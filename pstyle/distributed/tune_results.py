"""Turning a search's trials into a decision: the scalar score, the Pareto front, the chosen point,
and the files a search leaves behind (results table, front, plot). Pure Python; no Ray.

Objectives: `swd` (SWD to held-out style images, x1e3) is minimised, `ssim` (content SSIM) is
maximised. The two conflict (more texture, less structure), so the search returns a front.

Rule for the chosen configuration: among trials that ran the full budget, the Pareto-front point
with the lowest scalarised `score` (ties: lower swd). Because `score` is increasing in swd and
decreasing in ssim, the score's minimum over the trials is always on the front, so the rule and
the front agree; ASHA stops trials on the same score.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

OBJECTIVES = {"swd": "min", "ssim": "max"}
RULE = "lowest score = swd/swd_identity + ssim_weight*(1-ssim) on the Pareto front of full-budget trials"


def score(swd: float, ssim: float, swd_identity: float, ssim_weight: float) -> float:
    """ASHA's objective (lower is better). 1.0 + 0 = the identity baseline (content returned as is)."""
    return swd / swd_identity + ssim_weight * (1.0 - ssim)


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """a is at least as good on both objectives and strictly better on one."""
    no_worse = a["swd"] <= b["swd"] and a["ssim"] >= b["ssim"]
    return no_worse and (a["swd"] < b["swd"] or a["ssim"] > b["ssim"])


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The non-dominated rows, sorted by swd (ascending, so ssim ascends along the front too)."""
    front = [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]
    return sorted(front, key=lambda r: (r["swd"], -r["ssim"]))


def eligible(rows: Sequence[dict[str, Any]], iterations: int) -> list[dict[str, Any]]:
    """Trials the front is taken over: finished without error at the full budget. Early-stopped
    trials are less trained and not comparable; if none finished (tiny searches), use every trial
    that reported."""
    scored = [r for r in rows if r["status"] != "error" and r.get("swd") is not None]
    full = [r for r in scored if r["iterations"] >= iterations]
    return full or scored


def choose(front: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if not front:
        raise ValueError("no trial reported metrics: nothing to choose from")
    return min(front, key=lambda r: (r["score"], r["swd"]))


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return buf.getvalue()


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else value


def front_table(front: Sequence[dict[str, Any]], chosen: dict[str, Any] | None = None) -> str:
    lines = [f"{'trial':<22}{'iters':>6}{'SWD x1e3':>10}{'SSIM':>8}{'score':>8}"]
    for r in front:
        mark = "  <- chosen" if chosen is not None and r["trial_id"] == chosen["trial_id"] else ""
        lines.append(
            f"{r['trial_id']:<22}{r['iterations']:>6}{r['swd']:>10.2f}{r['ssim']:>8.3f}{r['score']:>8.3f}{mark}"
        )
    return "\n".join(lines)


def pareto_png(
    rows: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]], chosen: dict[str, Any] | None, title: str
) -> bytes:
    """Every trial (grey; crosses = stopped early or partial), the front (line), the chosen point (star)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    try:
        scored = [r for r in rows if r.get("swd") is not None]
        full = [r for r in scored if r["status"] == "terminated"]
        partial = [r for r in scored if r["status"] != "terminated"]
        ax.scatter([r["swd"] for r in full], [r["ssim"] for r in full], c="0.6", label="trials")
        if partial:
            ax.scatter(
                [r["swd"] for r in partial],
                [r["ssim"] for r in partial],
                c="0.6",
                marker="x",
                label="stopped early",
            )
        ax.plot(
            [r["swd"] for r in front], [r["ssim"] for r in front], "o-", c="tab:blue", label="Pareto front"
        )
        if chosen is not None:
            ax.scatter(
                [chosen["swd"]], [chosen["ssim"]], marker="*", s=250, c="tab:red", zorder=5, label="chosen"
            )
        ax.set_xlabel("SWD to held-out style x1e3 (lower is better)")
        ax.set_ylabel("content SSIM (higher is better)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)

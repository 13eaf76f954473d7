"""`pstyle demo`: the pipeline end to end on the embedded default (local folder, synthetic data, CPU ok).

Stages run in order, each timed; later stages (Tune, Train, Serve, A/B) join as they are built.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pstyle.checkpoint import load_checkpoint
from pstyle.config import cpu_preset
from pstyle.data.folders import ContentFolder, StyleUsers
from pstyle.data.synth import synthesize
from pstyle.evaluate import evaluate_model, format_table, write_report
from pstyle.images import save_image
from pstyle.train import HOLDOUT_PER_USER, train_base


@dataclass
class DemoPlan:
    """How big each stage is: the full demo and the `--tiny` one used by the tests."""

    image_size: int = 64
    n_content: int = 32
    n_users: int = 16
    steps: int = 200
    demo_users: int = 3

    @classmethod
    def tiny(cls) -> DemoPlan:
        return cls(image_size=32, n_content=8, n_users=8, steps=4, demo_users=3)


def run_demo(out: Path, tiny: bool = False, log: Callable[[str], None] = print) -> dict[str, float]:
    """Run every stage into `out`; returns seconds per stage."""
    plan = DemoPlan.tiny() if tiny else DemoPlan()
    out = Path(out)
    timings: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], object]) -> None:
        log(f"== {name}")
        start = time.perf_counter()
        fn()
        timings[name] = time.perf_counter() - start
        log(f"   {name}: {timings[name]:.1f} s")

    data_dir, base_dir = out / "data", out / "base"
    size = plan.image_size
    stage(
        "synthetic data", lambda: synthesize(data_dir, plan.n_content, plan.n_users, 6, max(size, 64), seed=0)
    )
    stage(
        "train base",
        lambda: train_base(cpu_preset(plan.image_size, plan.steps), data_dir, base_dir, progress=True),
    )

    def evaluate_stage() -> None:
        model, _ = load_checkpoint(base_dir)
        report = evaluate_model(model, data_dir, size, n_users=min(8, plan.n_users), n_content=8)
        write_report(report, out / "eval.json")
        log(format_table(report))

    stage("evaluate", evaluate_stage)
    stage("stylize users", lambda: write_user_grids(base_dir, data_dir, out / "users", size, plan.demo_users))
    log("stage times: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return timings


@torch.no_grad()
def write_user_grids(base_dir: Path, data_dir: Path, out: Path, size: int, n_users: int) -> None:
    """Per user one PNG row: content | style images | output | subject-only | background-only."""
    model, _ = load_checkpoint(base_dir)
    model.eval()
    content = ContentFolder(data_dir / "content", size)[0]["image"].unsqueeze(0)
    users = StyleUsers(data_dir / "styles", size)
    subject = model.subject_mask(content)  # same content for every user: segment once
    for uid in users.user_ids[:n_users]:
        styles, _ = users.split(uid, holdout=HOLDOUT_PER_USER)
        outputs = [model.stylize(content, styles, mask=m)[0] for m in (None, subject, 1 - subject)]
        save_image(torch.stack([content[0], *styles[:3], *outputs]), out / f"{uid}.png", nrow=8)

"""`pstyle bench train`: base-training throughput on Ray Train for several worker layouts.

Each layout (workers x CPUs per worker) trains the same `cpu_preset` model on the same synthetic
data with the same global batch, in a fresh run. Throughput comes from rank 0's per-step trace
(`trace_dir`), after `warmup` steps: it excludes Ray start-up, worker start-up and the final
checkpoint, which are reported separately as the run's wall time.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from pstyle.config import TrainJob, cpu_preset
from pstyle.distributed.runtime import ensure_ray


def bench_train_layouts(
    work_dir: Path,
    layouts: list[tuple[int, float]],
    steps: int = 60,
    warmup: int = 5,
    image_size: int = 64,
    batch: int = 8,
    ray_address: str = "local",
) -> dict[str, Any]:

    from pstyle.data.synth import synthesize
    from pstyle.distributed.train import run_base_training

    data = synthesize(work_dir / "data", n_content=32, n_users=12, images_per_user=6, size=image_size, seed=0)
    config = cpu_preset(image_size, steps + warmup)
    config.train.batch_size = batch
    config.train.checkpoint_every = steps + warmup  # one checkpoint, at the end
    ensure_ray(ray_address)
    rows = []
    for i, (workers, cpus) in enumerate(layouts):
        trace = work_dir / f"trace-{i}"
        load = os.getloadavg()[0]  # other processes competing for the cores: read figures with it
        start = time.perf_counter()
        job = TrainJob(data=str(data), store=str(work_dir / "store"), name=f"bench-{i}", workers=workers,
                       cpus_per_worker=cpus, max_failures=0, trace_dir=str(trace))  # fmt: skip
        outcome = run_base_training(config, job, log=lambda _: None)
        wall = time.perf_counter() - start
        log = [json.loads(line) for line in (trace / "steps.jsonl").read_text().splitlines()]
        log = [e for e in log if e["event"] == "step"]
        first, last = log[warmup], log[-1]
        n = last["step"] - first["step"]
        steps_per_s = n / (last["time"] - first["time"])
        rows.append({
            "workers": workers,
            "cpus_per_worker": cpus,
            "steps_per_s": steps_per_s,
            "images_per_s": steps_per_s * batch,
            # rank 0's own CPU time per step (all its threads): what a step costs one worker, which
            # other processes on the machine do not inflate the way they inflate wall time
            "cpu_s_per_step": (last["cpu"] - first["cpu"]) / n,
            "run_wall_s": wall,
            "final_step": outcome.step,
            "load_1m_at_start": load,
        })  # fmt: skip
    base = rows[0]["steps_per_s"]
    for row in rows:
        row["speedup"] = row["steps_per_s"] / base
    return {
        "benchmark": "train-ray",
        "machine": {
            "device": "cpu",
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_avg_1m_at_end": os.getloadavg()[0],
        },
        "settings": {"image_size": image_size, "global_batch": batch, "steps": steps, "warmup": warmup,
                     "model": "cpu_preset"},
        "rows": rows,
    }  # fmt: skip


def train_table(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"Ray Train base training, {s['image_size']}px, global batch {s['global_batch']}, "
        f"{s['steps']} timed steps after {s['warmup']} warm-up",
        f"{'workers':>8}{'cpus/w':>8}{'steps/s':>10}{'img/s':>9}{'speedup':>9}{'cpu s/step':>12}"
        f"{'run wall s':>12}{'load':>7}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['workers']:>8}{r['cpus_per_worker']:>8g}{r['steps_per_s']:>10.2f}{r['images_per_s']:>9.1f}"
            f"{r['speedup']:>9.2f}{r['cpu_s_per_step']:>12.3f}{r['run_wall_s']:>12.1f}"
            f"{r['load_1m_at_start']:>7.1f}"
        )
    lines.append(f"load average (1 min) at the end: {result['machine']['load_avg_1m_at_end']:.2f}")
    return "\n".join(lines)

"""`pstyle bench adapters-train`: what one user's adapter costs, and how batching and workers change it.

Every run trains the same synthetic users (the first `n_users`, by id, of 8 users with one style
family each) on the same briefly trained base, for a fixed number of steps (early stopping off, so
every run does the same work; held-out evaluation every `eval_every` steps is included, as in a real
job). Runs:

  seq          one user at a time, in this process (2 torch threads)
  grouped<K>   K users per optimizer step, one generator pass per user (2 threads)
  mixed<K>     K users per optimizer step, one pass with per-sample adapters (2 threads)
  ray<W>x<C>   the Ray Train job (`run_adapter_job`) with W workers of C CPUs, one user at a time,
               wall time including Ray Train's start-up

Wall time is what matters but is at the mercy of other processes on the machine; each row also
gives the CPU seconds per user (`time.process_time` of the training, all threads) and the 1-minute
load average before and after the run, so a contended figure can be recognised as such.

The base is only for timing (`base_steps`): the time per step does not depend on its weights.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pstyle.bench.common import machine_description
from pstyle.config import AdapterJobConfig, PersonalizeConfig
from pstyle.distributed.adapter_jobs import AdapterJob, Log, load_manifest, run_adapter_job, train_users

RUN = re.compile(r"(seq)|(grouped|mixed)(\d+)|ray(\d+)x(\d+)")


def bench_adapter_training(
    size: int = 128,
    n_users: int = 4,
    steps: int = 100,
    base_steps: int = 20,
    runs: list[str] | tuple[str, ...] = ("seq", "grouped4", "mixed4", "ray1x2", "ray2x1"),
    ray_address: str = "local",
    log: Log = print,
) -> dict[str, Any]:
    from pstyle.config import cpu_preset
    from pstyle.data.synth import FAMILIES, synthesize
    from pstyle.store import LocalStore
    from pstyle.store.registry import Registry
    from pstyle.training.trainer import train_base

    for run in runs:
        if not RUN.fullmatch(run):
            raise ValueError(f"unknown run {run!r}: seq, grouped<K>, mixed<K> or ray<W>x<C>")
    cfg = PersonalizeConfig(steps=steps, patience=steps)  # early stopping off: equal work per run
    rows = []
    with tempfile.TemporaryDirectory(prefix="pstyle-bench-adapters-") as tmp:
        root = Path(tmp)
        data = synthesize(root / "data", n_content=16, n_users=max(n_users, len(FAMILIES)), size=size, seed=0)
        log(f"training a {base_steps}-step timing base at {size} px")
        torch.manual_seed(0)
        base_dir = train_base(cpu_preset(size, base_steps), data, root / "base", progress=False)
        store = LocalStore(root / "store")
        version = Registry(store).publish_base("bench", base_dir)
        _, entries = load_manifest(store, data / "styles")
        entries = dict(list(entries.items())[:n_users])
        users_file = root / "users.json"
        users_file.write_text(json.dumps({"users": entries}))
        for i, run in enumerate(runs):
            m = RUN.fullmatch(run)
            name = f"bench-{i}-{run}"
            log(f"run {run}: {len(entries)} users, {steps} steps each")
            load_before = os.getloadavg()[0]
            if m.group(4):  # ray<W>x<C>
                workers, cpus = int(m.group(4)), int(m.group(5))
                spec = AdapterJobConfig(
                    users=str(users_file), base=f"bench@{version.number}", store=str(store.root),
                    workers=workers, cpus_per_worker=cpus, group_size=1, name=name, ray_address=ray_address,
                )  # fmt: skip
                summary = run_adapter_job(spec, cfg, log=log)
                records, wall, group, forward = summary["users"], summary["wall_seconds"], 1, "-"
            else:
                workers, cpus = 0, 2
                group, forward = (1, "-") if m.group(1) else (int(m.group(3)), m.group(2))
                job = AdapterJob(name, str(store.root), "bench", version.number, cfg.to_dict(), group,
                                 forward if group > 1 else "grouped")  # fmt: skip
                threads = torch.get_num_threads()
                torch.set_num_threads(cpus)
                started = time.perf_counter()
                try:
                    records = train_users(job, entries, log=log)
                finally:
                    torch.set_num_threads(threads)
                wall = time.perf_counter() - started
            done = [r for r in records.values() if r["status"] == "published"]
            rows.append(
                {
                    "run": run,
                    "workers": workers,
                    "cpus_per_worker": cpus,
                    "group_size": group,
                    "forward": forward,
                    "users": len(done),
                    "wall_s": wall,
                    "s_per_user": wall / max(len(done), 1),
                    "users_per_hour": 3600 * len(done) / wall,
                    "train_s_per_user": sum(r["seconds"] for r in done) / max(len(done), 1),
                    "cpu_s_per_user": sum(r["cpu_seconds"] for r in done) / max(len(done), 1),
                    "loadavg_1m": [load_before, os.getloadavg()[0]],  # other processes on the machine
                }
            )
            log(f"  {rows[-1]['s_per_user']:.1f} s/user, {rows[-1]['users_per_hour']:.1f} users/h")
    params = {"size": size, "users": n_users, "steps": steps, "base_steps": base_steps, "runs": list(runs)}
    machine = machine_description(torch.device("cpu"))
    return {"benchmark": "adapters-train", "machine": machine, "params": params, "rows": rows}


def training_table(result: dict[str, Any]) -> str:
    p = result["params"]
    lines = [
        f"adapter training, {p['size']} px, {p['users']} users x {p['steps']} steps (no early stopping)",
        f"{'run':<10}{'workers':>8}{'cpus':>6}{'group':>7}{'forward':>9}"
        f"{'wall s':>9}{'s/user':>8}{'users/h':>9}{'cpu s/u':>9}{'load0':>6}{'load1':>6}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['run']:<10}{r['workers']:>8}{r['cpus_per_worker']:>6}{r['group_size']:>7}{r['forward']:>9}"
            f"{r['wall_s']:>9.0f}{r['s_per_user']:>8.1f}{r['users_per_hour']:>9.1f}{r['cpu_s_per_user']:>9.1f}"
            f"{r['loadavg_1m'][0]:>6.1f}{r['loadavg_1m'][1]:>6.1f}"
        )
    return "\n".join(lines)

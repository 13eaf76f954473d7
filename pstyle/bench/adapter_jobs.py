"""`pstyle bench adapters-train`: what one user's adapter costs, and how batching and actors change it.

Every run trains the same synthetic users (the first `n_users`, by id, of 8 users with one style
family each) on the same briefly trained base, for a fixed number of steps (early stopping off, so
every run does the same work; held-out evaluation every `eval_every` steps is included, as in a real
job). Runs:

  seq          one user at a time, in this process (2 torch threads)
  grouped<K>   K users per optimizer step, one generator pass per user (2 threads)
  mixed<K>     K users per optimizer step, one pass with per-sample adapters (2 threads)
  ray<W>x<C>   the Ray Data job (`run_adapter_job`) with W actors of C CPUs, one user at a time,
               wall time including Ray's start-up

Wall time is what matters but is at the mercy of other processes on the machine; each row also
gives the CPU seconds per user (`time.process_time` of the training, all threads) and the 1-minute
load average before and after the run, so a contended figure can be recognised as such.

`--scale N` (`bench_adapter_scale`) measures the job itself rather than one adapter: N synthetic
users (their style sets drawn in turn from the 8 synthetic users' images) at a tiny size and a step
or two each, so the figure is the pipeline's throughput (users/hour: loading, training, publishing,
recording, scheduling) with 1 and 2 actors, and a run with one actor SIGKILLed mid-job that counts
the users lost and retrained (both must be 0).

The base is only for timing (`base_steps`): the time per step does not depend on its weights.
"""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from pstyle.bench.common import machine_description
from pstyle.config import AdapterJobConfig, PersonalizeConfig
from pstyle.distributed.adapter_jobs import (
    AdapterJob,
    Log,
    UserTrainer,
    load_manifest,
    run_adapter_job,
    save_manifest,
)
from pstyle.store import LocalStore, Store
from pstyle.store.layout import adapter_records_prefix
from pstyle.store.registry import Registry

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
    from pstyle.data.synth import FAMILIES

    for run in runs:
        if not RUN.fullmatch(run):
            raise ValueError(f"unknown run {run!r}: seq, grouped<K>, mixed<K> or ray<W>x<C>")
    cfg = PersonalizeConfig(steps=steps, patience=steps)  # early stopping off: equal work per run
    rows = []
    with tempfile.TemporaryDirectory(prefix="pstyle-bench-adapters-") as tmp:
        root = Path(tmp)
        data, base_dir = _timing_base(root, size, base_steps, max(n_users, len(FAMILIES)), log)
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
                    records = UserTrainer(job, log=log).train(entries)
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


def _timing_base(root: Path, size: int, base_steps: int, n_users: int, log: Log) -> tuple[Path, Path]:
    """(synthetic data, a `base_steps`-step base trained on it) under `root`."""
    from pstyle.config import cpu_preset
    from pstyle.data.synth import synthesize
    from pstyle.training.trainer import train_base

    data = synthesize(root / "data", n_content=16, n_users=n_users, images_per_user=5, size=size, seed=0)
    log(f"training a {base_steps}-step timing base at {size} px")
    torch.manual_seed(0)
    return data, train_base(cpu_preset(size, base_steps), data, root / "base", progress=False)


SCALE_RUN = re.compile(r"(kill)?(\d+)x(\d+)")


def bench_adapter_scale(
    n_users: int = 2000,
    size: int = 32,
    steps: int = 1,
    base_steps: int = 4,
    runs: list[str] | tuple[str, ...] = ("1x1", "2x1", "kill2x1"),
    group_size: int = 2,
    kill_at: float = 0.5,
    ray_address: str = "local",
    log: Log = print,
) -> dict[str, Any]:
    """Users/hour of the Ray Data adapter job over `n_users` synthetic users, per run `<W>x<C>` (W
    actors of C CPUs); `kill<W>x<C>` also SIGKILLs one actor once `kill_at` of the users are
    recorded and counts the users lost (no published record) and retrained (more than one version).
    Each run has its own store, so versions are counted per run."""
    for run in runs:
        if not SCALE_RUN.fullmatch(run):
            raise ValueError(f"unknown run {run!r}: <W>x<C> or kill<W>x<C>")
    from pstyle.distributed.runtime import ensure_ray

    cfg = PersonalizeConfig(steps=steps, eval_every=steps, patience=steps, batch_size=4)
    ensure_ray(ray_address)  # started once: each run's wall time counts its actors' start, not Ray's
    rows = []
    with tempfile.TemporaryDirectory(prefix="pstyle-bench-scale-") as tmp:
        root = Path(tmp)
        data, base_dir = _timing_base(root, size, base_steps, 8, log)
        for i, run in enumerate(runs):
            kill, actors, cpus = SCALE_RUN.fullmatch(run).groups()
            store = LocalStore(root / f"store-{i}")
            version = Registry(store).publish_base("bench", base_dir)
            _, styles = load_manifest(store, data / "styles")
            sets = list(styles.values())
            users = {f"user-{u:05d}": sets[u % len(sets)] for u in range(n_users)}
            manifest = save_manifest(store, "scale", users)
            spec = AdapterJobConfig(
                users=manifest, base=f"bench@{version.number}", store=str(store.root), name=f"scale-{i}",
                workers=int(actors), cpus_per_worker=float(cpus), group_size=group_size,
                n_content=2 * cfg.batch_size, ray_address=ray_address,
            )  # fmt: skip
            killer = _ActorKiller(store, spec.name, round(kill_at * n_users), log) if kill else None
            log(f"run {run}: {n_users} users, {steps} steps each, groups of {group_size}")
            load_before = os.getloadavg()[0]
            summary = run_adapter_job(spec, cfg, log=log)
            row = {
                "run": run,
                "actors": int(actors),
                "cpus_per_actor": float(cpus),
                "users": n_users,
                "published": len(summary["published"]),
                "failed": len(summary["failed"]),
                "wall_s": summary["wall_seconds"],
                "users_per_hour": summary["users_per_hour"],
                "loadavg_1m": [load_before, os.getloadavg()[0]],
            }
            if killer is not None:
                row |= killer.outcome(summary)
            rows.append(row)
            log(f"  {row['users_per_hour']:.0f} users/h in {row['wall_s']:.0f} s")
    params = {"users": n_users, "size": size, "steps": steps, "base_steps": base_steps, "runs": list(runs),
              "group_size": group_size, "kill_at": kill_at}  # fmt: skip
    machine = machine_description(torch.device("cpu")) | {"cpus": os.cpu_count() or 0}
    return {"benchmark": "adapters-scale", "machine": machine, "params": params, "rows": rows}


class _ActorKiller:
    """SIGKILLs one of a running job's actors once `after` users are recorded. The actor is found by
    the pid its own records name (`worker`: host:pid) and checked to be a Ray Data map worker around
    `UserTrainer` before the kill; the records then present are kept to compare after the job."""

    def __init__(self, store: Store, job: str, after: int, log: Log) -> None:
        self.store, self.prefix, self.after, self.log = store, adapter_records_prefix(job), after, log
        self.seen: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _records(self) -> dict[str, bytes]:
        return {key: self.store.get_bytes(key) for key in self.store.list(self.prefix)}

    def _writers(self) -> set[int]:
        """Pids of the processes that wrote the job's records so far."""
        workers = (json.loads(data).get("worker", "") for data in self._records().values())
        return {int(pid) for pid in (w.rsplit(":", 1)[-1] for w in workers) if pid.isdigit()}

    def _run(self) -> None:
        while len(list(self.store.list(self.prefix))) < self.after:
            time.sleep(0.2)
        writers = self._writers()
        pid = max(p for p in writers if _is_user_trainer(p))
        os.kill(pid, signal.SIGKILL)
        self.seen |= {"pid": pid, "at": time.monotonic(), "recorded": self._records()}
        self.log(f"  killed actor pid {pid} with {len(self.seen['recorded'])} users recorded")
        while time.monotonic() - self.seen["at"] < 600:  # until a new process writes a record
            if self._writers() - writers:
                self.seen["back_s"] = time.monotonic() - self.seen["at"]
                return
            time.sleep(0.5)

    def outcome(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Users lost and retrained, records rewritten since the kill, and how long the restart took."""
        self.thread.join(timeout=30)
        registry = Registry(self.store)
        users = summary["users"]
        recorded = self.seen.get("recorded", {})
        return {
            "killed_pid": self.seen.get("pid"),
            "recorded_at_kill": len(recorded),
            "lost": sum(r["status"] != "published" for r in users.values()),
            "retrained": sum(len(registry.versions("adapter", u)) - 1 for u in users),
            "records_rewritten": sum(self.store.get_bytes(k) != data for k, data in recorded.items()),
            "recovered": sum(bool(r.get("recovered")) for r in users.values()),
            "redone_batch_resumed": sum(bool(r.get("resumed")) for r in users.values()),
            "restart_to_new_record_s": self.seen.get("back_s"),
        }


def _is_user_trainer(pid: int) -> bool:
    """Whether `pid` runs a Ray Data map worker around `UserTrainer` (its Ray process title)."""
    try:
        return "UserTrainer" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False


def scale_table(result: dict[str, Any]) -> str:
    p, m = result["params"], result["machine"]
    lines = [
        f"adapter job, {p['users']} users at {p['size']} px x {p['steps']} steps, "
        f"groups of {p['group_size']}, {m['cpus']} CPUs",
        f"{'run':<10}{'actors':>7}{'cpus':>6}{'published':>10}{'wall s':>9}{'users/h':>9}"
        f"{'lost':>6}{'retrained':>10}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['run']:<10}{r['actors']:>7}{r['cpus_per_actor']:>6g}{r['published']:>10}{r['wall_s']:>9.0f}"
            f"{r['users_per_hour']:>9.0f}{r.get('lost', ''):>6}{r.get('retrained', ''):>10}"
        )
    return "\n".join(lines)

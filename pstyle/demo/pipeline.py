"""`pstyle demo`: the whole pipeline end to end on the embedded default, through the cluster code paths.

Stages, each timed (a local Ray instance stands in for the cluster; the store is a folder under the
output, or `--store s3://...`):

  1 data       synthetic content scenes and style users (`pstyle.data.synth`)
  2 tune       a multi-objective Ray Tune search with ASHA (`pstyle.distributed.tune.run_search`), every
               trial fine-tuning the bundled base (`pstyle/weights/`)
  3 train      Ray Train data-parallel fine-tuning of the bundled base with the chosen config
               (`pstyle.distributed.train.run_base_training`); the result becomes base `production`
  4 adapters   a Ray Data adapter job for the demo users (`pstyle.distributed.adapter_jobs.run_adapter_job`),
               aliased `production`; then a second job with a longer schedule, aliased `candidate`
  5 serve      the Serve app over real HTTP: every user's requests, then an A/B experiment of
               production vs candidate with simulated ratings (`pstyle/demo/traffic.py`, a subprocess:
               the core never imports `serve/`), reported; the winner, if any, is promoted
  6 report     `report.html` (`pstyle.demo.report`)

`--tiny` runs the same stages on toy sizes (the test suite's end-to-end check).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pstyle.config import AdapterJobConfig, DemoPlan, Param, PStyleConfig, TrainJob, TuneConfig
from pstyle.distributed.runtime import ensure_ray
from pstyle.store.registry import CANDIDATE_ALIAS, PRODUCTION_ALIAS
from pstyle.training.bundled import warm_start_preset

Log = Callable[[str], None]
MARKER = ".pstyle-demo"  # marks a folder the demo made, so a rerun may clear it


def serve_app_root() -> Path:
    """The folder holding the Serve app (`serve/app.py`): the working directory or pstyle's checkout.

    The Serve app is deployed from a checkout or the image (infra/docker), not from the installed
    package, so the traffic client runs with that folder on its path.
    """
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "serve" / "app.py").is_file():
            return root
    raise FileNotFoundError("serve/app.py not found: run the demo from a pstyle checkout or its image")


def tune_config(plan: DemoPlan, store: str, data_dir: Path, name: str) -> TuneConfig:
    """The demo's search: learning rates and two loss weights, every trial fine-tuning the bundled base."""
    return TuneConfig(
        name=name,
        store=store,
        data=str(data_dir),
        search="optuna",
        scheduler="asha",
        num_samples=plan.tune_trials,
        iterations=plan.tune_iterations,
        steps_per_iteration=plan.tune_steps,
        grace_period=1,
        reduction_factor=2,
        eval_users=min(4, plan.n_users),
        eval_content=min(8, plan.n_content),
        base=warm_start_preset(plan.image_size),
        space={
            "train.lr_g": Param(3e-5, 3e-4, log=True),
            "train.lr_d": Param(1e-4, 1e-3, log=True),
            "loss.content": Param(0.3, 3.0, log=True),
            "loss.style": Param(1.5, 15.0, log=True),
        },
    )


def prepare_out(out: Path) -> None:
    """A fresh output folder: refuses to clear a non-empty folder the demo did not make."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FileExistsError(
                f"{out} is not empty and was not made by `pstyle demo`: remove it or choose another --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by pstyle demo; rerunning the demo clears this folder\n")


def run_demo(
    out: Path, tiny: bool = False, store: str | None = None, log: Log = print, keep_serving: bool = False
) -> dict[str, float]:
    """Run every stage into `out`; returns seconds per stage. `keep_serving` then leaves the app up
    (pstyle.demo.keep_serving) until Ctrl-C."""
    import ray

    plan = DemoPlan.tiny() if tiny else DemoPlan()
    out = Path(out).resolve()
    prepare_out(out)
    run = time.strftime("demo-%Y%m%d-%H%M%S")  # names in the store: a shared S3 store keeps every run
    store = store or str(out / "store")
    timings: dict[str, float] = {}
    state: dict[str, Any] = {"plan": asdict(plan), "run": run, "store": store}

    def stage(name: str, fn: Callable[[], object]) -> None:
        log(f"== [{len(timings) + 1}/6] {name}")
        start = time.perf_counter()
        fn()
        timings[name] = time.perf_counter() - start
        log(f"   {name}: {timings[name]:.1f} s")

    ensure_ray("local", num_cpus=max(2, os.cpu_count() or 2))
    try:
        stage("data", lambda: make_data(plan, out / "data"))
        stage("tune", lambda: state.update(tune_stage(plan, store, out / "data", run, log)))
        stage("train", lambda: state.update(train_stage(plan, store, out / "data", run, state, log)))
        stage("adapters", lambda: state.update(adapter_stage(plan, store, out, run, log)))
        stage("serve", lambda: state.update(serve_stage(plan, store, out, run, state, log)))
        stage("report", lambda: state.update(report_stage(plan, store, out, state, timings)))
        (out / "demo.json").write_text(json.dumps({**state, "timings": timings}, indent=1, default=str))
        log("stage times: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
        log(f"total {sum(timings.values()):.1f} s; report: {out / 'report.html'}")
        if keep_serving:
            serve_until_interrupted(out)
    finally:
        ray.shutdown()
    return timings


def serve_until_interrupted(out: Path) -> None:
    """The demo's app on this Ray cluster until Ctrl-C: the child gets the terminal's SIGINT too and
    shuts Serve down; this side waits for it, then its caller stops Ray."""
    import ray

    cmd = [sys.executable, "-m", "pstyle.demo.keep_serving", "--spec", str(out / "serve-spec.json"),
           "--address", ray.get_runtime_context().gcs_address]  # fmt: skip
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ray Train's trainer leaves its own
    child = subprocess.Popen(cmd, cwd=serve_app_root())
    try:
        # Short sleeps, not child.wait(): a SIGINT that lands on one of Ray's threads interrupts no
        # blocking wait here, only the next bytecode of this thread.
        while child.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)  # also when the SIGINT reached only this process
        child.wait()


def make_data(plan: DemoPlan, data_dir: Path) -> None:
    from pstyle.data.synth import synthesize

    synthesize(data_dir, plan.n_content, plan.n_users, plan.images_per_user, max(plan.image_size, 64), seed=0)


def tune_stage(plan: DemoPlan, store: str, data_dir: Path, run: str, log: Log) -> dict[str, Any]:
    from pstyle.distributed.tune import run_search

    cfg = tune_config(plan, store, data_dir, f"{run}-tune")
    summary = run_search(cfg, log=log)
    chosen = {key: summary["chosen"][key] for key in cfg.space}
    return {"tune": {"name": cfg.name, "chosen": chosen, "version": summary["version"],
                     "outputs": summary["outputs"]}}  # fmt: skip


def train_stage(
    plan: DemoPlan, store: str, data_dir: Path, run: str, state: dict[str, Any], log: Log
) -> dict[str, Any]:
    """Base training from the search's chosen configuration, published and made `production`."""
    from pstyle.distributed.train import run_base_training
    from pstyle.store import open_store
    from pstyle.store.registry import Registry

    config: PStyleConfig = warm_start_preset(plan.image_size, plan.base_steps).with_overrides(
        state["tune"]["chosen"]
    )
    job = TrainJob(data=str(data_dir), store=store, name=f"{run}-base", workers=plan.workers, max_failures=1)
    outcome = run_base_training(config, job, log=log)
    Registry(open_store(store)).set_alias("base", "base", PRODUCTION_ALIAS, outcome.version.number)
    return {"base": {"version": outcome.version.number, "step": outcome.step, "config": config.to_dict()}}


def demo_users(plan: DemoPlan, data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "styles").iterdir() if p.is_dir())[: plan.demo_users]


def adapter_stage(plan: DemoPlan, store: str, out: Path, run: str, log: Log) -> dict[str, Any]:
    """Two adapter jobs over the demo users: `production` (short schedule) and `candidate` (longer)."""
    from pstyle.config import PersonalizeConfig
    from pstyle.distributed.adapter_jobs import run_adapter_job
    from pstyle.store import open_store
    from pstyle.store.registry import Registry

    users = out / "users"
    for user in demo_users(plan, out / "data"):
        shutil.copytree(out / "data" / "styles" / user, users / user)
    registry = Registry(open_store(store))
    jobs = {}
    for alias, steps in ((PRODUCTION_ALIAS, plan.adapter_steps), (CANDIDATE_ALIAS, plan.candidate_steps)):
        cfg = PersonalizeConfig(steps=steps, eval_every=max(1, steps // 4))
        job = AdapterJobConfig(users=str(users), base="base@production", store=store, workers=plan.workers,
                               name=f"{run}-adapters-{alias}")  # fmt: skip
        summary = run_adapter_job(job, cfg, log=log)
        if summary["failed"] or summary["skipped"]:
            raise RuntimeError(
                f"adapter job {summary['job']}: failed {summary['failed']}, skipped {summary['skipped']}"
            )
        for user in summary["published"]:
            registry.set_alias("adapter", user, alias, summary["users"][user]["version"])
        jobs[alias] = {u: {k: r[k] for k in ("version", "before", "after", "seconds")}
                       for u, r in summary["users"].items()}  # fmt: skip
    return {"adapters": jobs, "manifest": summary["manifest"]}


def balanced_experiment(users: list[str], run: str) -> dict[str, Any]:
    """The A/B experiment (production vs candidate, all demo users). Assignment is a hash of the
    experiment name and the user, and the name carries the run's timestamp, so with a handful of
    users each run would split them differently (even 4:0) and reach a different verdict. Take the
    first name suffix whose assignment alternates over the sorted users (production, candidate,
    production, ...): the same even split every run."""
    from pstyle.serving.experiments import Experiment, assign, production_vs_candidate

    variants = production_vs_candidate()
    wanted = [variants[i % 2].name for i in range(len(users))]
    for attempt in range(64 << len(users)):  # each name matches with probability 2**-len(users)
        exp = Experiment(f"{run}-ab{attempt}", variants, users=tuple(users))
        if [assign(exp, u).name for u in sorted(users)] == wanted:
            data = exp.to_dict()
            data.pop("created")
            return data
    raise RuntimeError("no experiment name splits the cohort evenly")


def serve_stage(
    plan: DemoPlan, store: str, out: Path, run: str, state: dict[str, Any], log: Log
) -> dict[str, Any]:
    """Keys for the users and an admin, then `pstyle/demo/traffic.py` on this Ray cluster."""
    import ray

    from pstyle.images import list_images
    from pstyle.serving.api_keys import create_user
    from pstyle.serving.experiments import ExperimentError, format_report, promote
    from pstyle.store import open_store
    from pstyle.store.registry import Registry

    store_obj = open_store(store)
    users = sorted(state["adapters"]["production"])
    keys = {u: create_user(store_obj, u) for u in users}
    content = list_images(out / "data" / "content" / "images")[:4]
    styles = sorted(p for p in (out / "data" / "styles").iterdir() if p.is_dir())
    newcomer_styles = next((p for p in styles if p.name not in users), styles[-1])  # no adapter either way
    spec = {
        "store": store,
        "size": plan.image_size,
        "keys": keys,
        "newcomer": {
            "key": create_user(store_obj, f"{run}-newcomer"),
            "styles": [str(p) for p in list_images(newcomer_styles)],
        },
        "admin_key": create_user(store_obj, f"{run}-admin", admin=True),
        "content": [str(p) for p in content],
        "manifest": state["manifest"],
        "requests": plan.requests,
        "ab_requests": plan.ab_requests,
        "ab": balanced_experiment(users, run),
    }
    spec_path = out / "serve-spec.json"
    spec_path.touch(mode=0o600)  # it holds API keys
    spec_path.write_text(json.dumps(spec, indent=1))
    cmd = [sys.executable, "-m", "pstyle.demo.traffic", "--spec", str(spec_path), "--out", str(out),
           "--address", ray.get_runtime_context().gcs_address]  # fmt: skip
    subprocess.run(cmd, cwd=serve_app_root(), check=True)
    serving = json.loads((out / "serving.json").read_text())
    log(format_report(serving["ab_report"]))
    result: dict[str, Any] = {"experiment": spec["ab"]["name"], "verdict": serving["ab_report"]["verdict"]}
    try:
        result["promoted"] = promote(store_obj, Registry(store_obj), spec["ab"]["name"])
    except ExperimentError as exc:  # no significant winner: production stays
        result["promoted"] = None
        log(f"not promoted: {exc}")
    return {"serve": result}


def report_stage(
    plan: DemoPlan, store: str, out: Path, state: dict[str, Any], timings: dict[str, float]
) -> dict[str, Any]:
    from pstyle.demo.report import write_report

    return {"report": str(write_report(out, store, state, timings, plan.image_size))}

"""Ray Tune hyperparameter search of the base model: `pstyle tune` and `ray_jobs/tune_base.py`.

Ray is imported inside functions only, so the core stays importable without it.

A trial is `BaseTrainer` from `pstyle.training.trainer`: every Tune iteration runs `steps_per_iteration`
training steps, scores the model on held-out style images (`pstyle.evaluation.synthetic`), reports
{swd, ssim, score} and saves a safetensors checkpoint (`BaseTrainer.save`) through Tune into the
run's store. Searchers: Optuna TPE, multi-objective over (swd min, ssim max), or seeded random
sampling. ASHA early-stops on the scalarised `score` (see `pstyle.distributed.tune_results`);
Optuna learns only from trials that ran their whole budget (early-stopped ones count as pruned).

Store layout (the same store as the registry: a folder or s3://bucket/prefix):
    ray/tune/<name>/...         Tune's experiment: state, trial results, checkpoints
    tune/<name>/trials.csv      every trial: status, iterations, objectives, score, params
    tune/<name>/trials.json
    tune/<name>/pareto.json     the front and the chosen point (with the rule)
    tune/<name>/pareto.png
    tune/<name>/chosen.json     chosen params, full config, metrics, registry version
    tune/<name>/chosen-config.yaml   ready for `pstyle train-base --config`

Fault tolerance: failed trials are retried from their last checkpoint (`max_failures`); running
the same `name` again restores the experiment (`Tuner.can_restore`/`Tuner.restore`): finished
trials are kept, unfinished and errored ones continue from their checkpoints.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from pstyle.config import Param, TuneConfig
from pstyle.distributed.runtime import ensure_ray
from pstyle.distributed.tune_results import (
    RULE,
    choose,
    eligible,
    front_table,
    pareto_front,
    pareto_png,
    rows_to_csv,
    score,
)
from pstyle.store.registry import CANDIDATE_ALIAS

EXPERIMENTS = "ray/tune"  # store prefix of Tune's experiments (Ray Train's runs are under ray/train)
RESULTS = "tune"  # store prefix of the outputs
TRIAL_STATE = "trial_state.json"  # next to the checkpoint's files: iteration and start count


# ---------------------------------------------------------------------------------------- trial


def run_trial(params: dict[str, Any], settings: dict[str, Any]) -> None:
    """One Tune trial (runs in a Ray worker): train, evaluate and report every iteration.

    Reported metrics: swd, ssim, score, swd_identity, step, and `starts` (how many times this
    trial has been started: 1, plus one per restore from its checkpoint after a failure).
    """
    from ray import tune

    from pstyle.evaluation.synthetic import evaluate
    from pstyle.quality.baselines import identity
    from pstyle.training.trainer import BaseTrainer, training_data

    cfg = TuneConfig.from_dict(settings)
    torch.set_num_threads(max(1, math.floor(cfg.cpus_per_trial)))
    device = torch.device("cuda" if cfg.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu")
    config = cfg.trial_config(params)
    size = config.train.image_size
    data_dir = trial_data(cfg)
    data = training_data(config, data_dir)
    trainer = BaseTrainer(config, device)
    starts = 1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.restore(Path(d), data)
            starts = json.loads((Path(d) / TRIAL_STATE).read_text())["starts"] + 1
    resumed_at = trainer.step_count

    def scores(method: Callable) -> dict[str, float]:
        return evaluate(
            {"m": method}, data_dir, size, n_users=cfg.eval_users, n_content=cfg.eval_content, seed=0
        )["m"]

    swd_identity = scores(identity)["swd"]

    @torch.no_grad()
    def stylize(content: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        return trainer.model.stylize(content.to(device), styles.to(device), seed=0).float().cpu()

    def measure() -> dict[str, float]:
        trainer.model.eval()
        s = scores(stylize)
        trainer.model.train()
        return {
            "swd": s["swd"],
            "ssim": s["ssim"],
            "score": score(s["swd"], s["ssim"], swd_identity, cfg.ssim_weight),
            "swd_identity": swd_identity,
            "step": trainer.step_count,
            "starts": starts,
            "resumed_at_step": resumed_at,
            "wall_time": time.time(),  # float seconds: Tune's own `timestamp` is whole seconds
        }

    iteration = trainer.step_count // cfg.steps_per_iteration
    if iteration >= cfg.iterations:
        # Restored from its final checkpoint (the driver died before recording the trial's end):
        # report the final metrics again instead of training further.
        tune.report(measure())
        return
    while iteration < cfg.iterations:
        for _ in range(cfg.steps_per_iteration):
            trainer.step(data.sample(config.train.batch_size, config.train.style_images, device))
        iteration += 1
        if iteration == cfg.fail_at_iteration:
            _inject_failure_once(tune.get_context().get_trial_dir(), iteration)
        metrics = measure()
        if iteration % cfg.checkpoint_every and iteration < cfg.iterations:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory(prefix="pstyle-trial-") as tmp:
            trainer.save(Path(tmp), data)
            (Path(tmp) / TRIAL_STATE).write_text(json.dumps({"iteration": iteration, "starts": starts}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _inject_failure_once(trial_dir: str, iteration: int) -> None:
    """Fault injection (`fail_at_iteration`, tests only): raise the first time, not on the retry.
    The marker lives in the trial's local directory, so this is meant for single-node runs."""
    marker = Path(trial_dir) / ".injected-failure"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise RuntimeError(f"injected failure at iteration {iteration} (fail_at_iteration)")


def trial_data(cfg: TuneConfig) -> Path:
    """The dataset a trial trains on: `cfg.data`, or deterministic synthetic data made once per node
    (synthesize is idempotent and safe against concurrent writers, so trials can share it)."""
    if cfg.data:
        return Path(cfg.data)
    from pstyle.data.synth import synthesize

    size = cfg.base.train.image_size
    n = (cfg.synth_content, cfg.synth_users, cfg.synth_images_per_user)
    out = Path(tempfile.gettempdir()) / "pstyle-synth" / f"c{n[0]}-u{n[1]}-i{n[2]}-s{size}-seed0"
    return synthesize(out, n_content=n[0], n_users=n[1], images_per_user=n[2], size=size, seed=0)


def trial_dirname(trial: Any) -> str:
    """Short, key-safe trial directory names (the default embeds the sampled config)."""
    return f"trial-{trial.trial_id}"


# --------------------------------------------------------------------------------------- driver


def max_concurrent(cfg: TuneConfig, resources: dict[str, float]) -> int:
    """Trials that fit the cluster at once: min over CPUs (and GPUs when trials ask for them).

    0 means no limit, which `autoscale` asks for: on an autoscaling cluster today's resources say
    nothing about tomorrow's, and only trials pending for resources make the autoscaler add nodes.
    """
    if cfg.max_concurrent_trials > 0:
        return cfg.max_concurrent_trials
    if cfg.autoscale:
        return 0
    fits = [math.floor(resources.get("CPU", 0) / cfg.cpus_per_trial + 1e-9)]
    if cfg.gpus_per_trial > 0:
        fits.append(math.floor(resources.get("GPU", 0) / cfg.gpus_per_trial + 1e-9))
    n = min(fits)
    if n < 1:
        raise ValueError(
            f"a trial asks for {cfg.cpus_per_trial} CPU / {cfg.gpus_per_trial} GPU but the cluster has "
            f"{resources.get('CPU', 0)} CPU / {resources.get('GPU', 0)} GPU"
        )
    return n


def _searcher(cfg: TuneConfig, limit: int) -> Any:
    """The search algorithm, running at most `limit` trials at once (0: no limit). The searchers
    apply the limit themselves: Tune's `max_concurrent_trials` only wraps a `Searcher` and is ignored
    (with a warning) for the random search's `BasicVariantGenerator`."""
    if cfg.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter

        optuna = _full_budget_optuna(cfg)
        return ConcurrencyLimiter(optuna, max_concurrent=limit) if limit else optuna
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=cfg.seed, max_concurrent=limit)


def _full_budget_optuna(cfg: TuneConfig) -> Any:
    """Optuna's multi-objective search (SWD down, SSIM up; metric and mode live on the searcher).

    It learns only from trials that ran their whole budget: a trial ASHA stopped early is told to
    the study as pruned, not as if its half-trained SWD and SSIM were final, which would pull the
    Pareto front toward configurations that merely start fast."""
    from ray.tune.search.optuna import OptunaSearch

    class FullBudgetOptuna(OptunaSearch):
        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if not error and result is not None and result.get("training_iteration", 0) < cfg.iterations:
                result = None  # OptunaSearch tells a finished trial without metrics as PRUNED
            super().on_trial_complete(trial_id, result, error)

    return FullBudgetOptuna(metric=["swd", "ssim"], mode=["min", "max"], seed=cfg.seed)


def _scheduler(cfg: TuneConfig) -> Any:
    if cfg.scheduler == "none":
        return None  # FIFO: every trial runs all iterations
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",
        metric="score",
        mode="min",
        max_t=cfg.iterations,
        grace_period=min(cfg.grace_period, cfg.iterations),
        reduction_factor=cfg.reduction_factor,
    )


def tune_domain(param: Param) -> Any:
    """A search-space entry as Ray Tune's sampling domain (Optuna's searcher converts these)."""
    from ray import tune

    if param.choices is not None:
        return tune.choice(list(param.choices))
    if param.integer:
        low, high = int(param.low), int(param.high) + 1  # Tune's randint excludes the upper bound
        return tune.lograndint(low, high) if param.log else tune.randint(low, high)
    return tune.loguniform(param.low, param.high) if param.log else tune.uniform(param.low, param.high)


def build_tuner(cfg: TuneConfig, storage_path: str, filesystem: Any) -> tuple[Any, bool]:
    """A new Tuner, or the restored one when `<storage_path>/<name>` holds this experiment already."""
    import ray
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, settings=cfg.to_dict()),
        {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial},
    )
    space = {key: tune_domain(param) for key, param in cfg.space.items()}  # flat: tables name the key
    path = f"{storage_path.rstrip('/')}/{cfg.name}"
    if tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        tuner = tune.Tuner.restore(
            path, trainable, resume_errored=True, param_space=space, storage_filesystem=filesystem
        )
        return tuner, True
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=cfg.num_samples,
            search_alg=_searcher(cfg, max_concurrent(cfg, ray.cluster_resources())),
            scheduler=_scheduler(cfg),
            trial_dirname_creator=trial_dirname,
            reuse_actors=True,  # one worker per slot: torch is imported once, not once per trial
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),  # the latest: resume + candidate
        ),
    )
    return tuner, False


def result_rows(grid: Any, cfg: TuneConfig) -> list[dict[str, Any]]:
    """One row per trial: status, last reported metrics, sampled params, checkpoint location."""
    rows = []
    for result in grid:
        m = result.metrics or {}
        # Training done, not reports made: a trial restored from its final checkpoint reports again.
        iterations = int(m.get("step") or 0) // cfg.steps_per_iteration
        if result.error is not None:
            status = "error"
        else:
            status = "terminated" if iterations >= cfg.iterations else "stopped_early"
        row = {
            "trial_id": trial_id(result),
            "status": status,
            "iterations": iterations,
            "swd": m.get("swd"),
            "ssim": m.get("ssim"),
            "score": m.get("score"),
            "swd_identity": m.get("swd_identity"),
            "step": m.get("step"),
            "starts": m.get("starts"),
            "resumed_at_step": m.get("resumed_at_step"),
            "seconds": m.get("time_total_s"),
            **{key: result.config.get(key) for key in sorted(cfg.space)},
            "checkpoint": result.checkpoint.path if result.checkpoint is not None else None,
            "error": str(result.error).splitlines()[0][:300] if result.error is not None else None,
        }
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial_id"])


def run_search(cfg: TuneConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the search, write the outputs to the store, register the candidate.

    Returns a summary: experiment path, whether it was restored, rows, front, chosen, registry
    version, and where each output was written.
    """

    from pstyle.store import open_store

    if cfg.data and "://" not in cfg.data:
        cfg = cfg.with_overrides({"data": str(Path(cfg.data).resolve())})  # trials may chdir
    ensure_ray(cfg.ray_address)
    store = open_store(cfg.store)
    storage_path, filesystem = store.arrow_storage(EXPERIMENTS)
    tuner, restored = build_tuner(cfg, storage_path, filesystem)
    log(f"{'resuming' if restored else 'starting'} experiment {cfg.name} in {storage_path}/{cfg.name}")
    grid = tuner.fit()
    rows = result_rows(grid, cfg)
    front = pareto_front(eligible(rows, cfg.iterations))
    chosen = choose(front)
    checkpoint = next(r.checkpoint for r in grid if trial_id(r) == chosen["trial_id"])
    version = register_candidate(store, cfg, chosen, checkpoint)
    outputs = write_outputs(store, cfg, rows, front, chosen, version)
    log(front_table(front, chosen))
    log(f"chosen {chosen['trial_id']}: base {cfg.model_name} v{version.number} alias {CANDIDATE_ALIAS}")
    return {
        "experiment": f"{storage_path.rstrip('/')}/{cfg.name}",
        "restored": restored,
        "rows": rows,
        "front": front,
        "chosen": chosen,
        "version": version.number,
        "outputs": outputs,
        "grid": grid,  # Tune's ResultGrid, for callers that want per-iteration histories
    }


def trial_id(result: Any) -> str:
    """A result's trial id (from its metrics, else from the `trial-<id>` directory name)."""
    return (result.metrics or {}).get("trial_id") or Path(result.path).name.removeprefix("trial-")


def register_candidate(store: Any, cfg: TuneConfig, chosen: dict[str, Any], checkpoint: Any) -> Any:
    """Publish the chosen trial's checkpoint as a base-model version aliased `candidate`.

    Idempotent: when `candidate` already points at these exact weights (a resubmitted, finished
    experiment), the existing version is returned instead of publishing a duplicate.
    """
    from pstyle.store.registry import Registry, RegistryError

    if checkpoint is None:
        raise ValueError(f"trial {chosen['trial_id']} has no checkpoint to register")
    registry = Registry(store)
    metrics = {k: chosen[k] for k in ("swd", "ssim", "score", "swd_identity", "iterations")}
    metrics.update({"tune_experiment": cfg.name, "tune_trial": chosen["trial_id"]})
    with checkpoint.as_directory() as d:
        fingerprint = json.loads((Path(d) / "meta.json").read_text())["fingerprint"]
        try:
            current = registry.resolve("base", cfg.model_name, CANDIDATE_ALIAS)
            if current.manifest.get("fingerprint") == fingerprint:
                return current
        except RegistryError:
            pass
        return registry.publish_base(cfg.model_name, Path(d), metrics=metrics, aliases=[CANDIDATE_ALIAS])


def write_outputs(
    store: Any,
    cfg: TuneConfig,
    rows: list[dict[str, Any]],
    front: list[dict[str, Any]],
    chosen: dict[str, Any],
    version: Any,
) -> dict[str, str]:
    """Results table (CSV + JSON), Pareto front (JSON + PNG) and the chosen configuration."""
    params = {key: chosen[key] for key in cfg.space}
    config = cfg.trial_config(params).to_dict()
    chosen_doc = {
        "rule": RULE,
        "ssim_weight": cfg.ssim_weight,
        "trial_id": chosen["trial_id"],
        "params": params,
        "metrics": {k: chosen[k] for k in ("swd", "ssim", "score", "swd_identity", "iterations")},
        "config": config,
        "checkpoint": chosen["checkpoint"],
        "registry": {
            "kind": "base",
            "name": cfg.model_name,
            "version": version.number,
            "alias": CANDIDATE_ALIAS,
        },
    }
    files = {
        "trials.csv": rows_to_csv(rows).encode(),
        "trials.json": json.dumps(rows, indent=2).encode(),
        "pareto.json": json.dumps(
            {"rule": RULE, "front": front, "chosen": chosen["trial_id"]}, indent=2
        ).encode(),
        "pareto.png": pareto_png(
            rows, front, chosen, f"{cfg.name}: {len(rows)} trials, {cfg.search}/{cfg.scheduler}"
        ),
        "chosen.json": json.dumps(chosen_doc, indent=2).encode(),
        "chosen-config.yaml": yaml.safe_dump(config, sort_keys=False).encode(),
    }
    out = {}
    for name, data in files.items():
        key = f"{RESULTS}/{cfg.name}/{name}"
        store.put_bytes(key, data)
        out[name] = f"{store.uri.rstrip('/')}/{key}"
    return out

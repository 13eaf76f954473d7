"""`pstyle tune` and `pstyle bench tune`: the Ray Tune search from the command line.

`ray_jobs/tune_base.py` runs the same command, so a job and a local run take the same flags.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import yaml

from pstyle.tune_config import SCHEDULERS, SEARCHERS, TuneConfig

# flag name -> TuneConfig field; a flag given on the command line wins over --config and --set.
FLAG_FIELDS = (
    "name",
    "store",
    "data",
    "model_name",
    "search",
    "scheduler",
    "num_samples",
    "iterations",
    "steps_per_iteration",
    "cpus_per_trial",
    "gpus_per_trial",
    "max_concurrent_trials",
    "max_failures",
    "seed",
)


def load_tune_config(path: Path | None, sets: tuple[str, ...], flags: dict) -> TuneConfig:
    """Defaults, then the --config file, then `--set key=value` (YAML-typed), then explicit flags."""
    from pstyle.cli import parse_overrides  # here: pstyle.cli imports this module

    cfg = TuneConfig.load(path) if path else TuneConfig()
    overrides = parse_overrides(sets) | {name: value for name, value in flags.items() if value is not None}
    return cfg.with_overrides(overrides)


@click.command("tune")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="e.g. --set base.train.image_size=32 --set 'space.train.lr_g={low: 1.0e-4, high: 1.0e-3}'",
)
@click.option("--name", default=None, help="experiment name; the same name again resumes it [tune-base]")
@click.option("--store", default=None, help="folder or s3://bucket/prefix [$PSTYLE_STORE or ~/.pstyle]")
@click.option("--data", default=None, help="dataset folder on every node [synthetic data, made per node]")
@click.option("--model-name", default=None, help="registry name of the candidate [base]")
@click.option("--search", type=click.Choice(SEARCHERS), default=None, help="[optuna]")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default=None, help="[asha]")
@click.option("--num-samples", type=int, default=None, help="trials [16]")
@click.option("--iterations", type=int, default=None, help="reports per trial, ASHA's max_t [10]")
@click.option("--steps-per-iteration", type=int, default=None, help="training steps per report [20]")
@click.option("--cpus-per-trial", type=float, default=None, help="[1]")
@click.option("--gpus-per-trial", type=float, default=None, help="fractional GPUs allowed, e.g. 0.25 [0]")
@click.option("--max-concurrent-trials", type=int, default=None, help="[0: from cluster resources]")
@click.option("--max-failures", type=int, default=None, help="retries per failed trial [2]")
@click.option("--seed", type=int, default=None, help="searcher seed [0]")
@click.option(
    "--ray-address",
    default=None,
    help="'local': a private Ray here; an address: join that cluster [RAY_ADDRESS, a running one, else new]",
)
@click.option("--print-config", is_flag=True, help="print the effective configuration as YAML and exit")
def tune(
    config_path: Path | None, sets: tuple[str, ...], ray_address: str | None, print_config: bool, **flags
) -> None:
    """Multi-objective hyperparameter search of the base model (Ray Tune + Optuna, ASHA).

    Writes the results table, Pareto front + plot and chosen config to the store under tune/NAME/
    (Tune's own files: ray/tune/NAME/) and registers the chosen checkpoint as base MODEL_NAME,
    alias `candidate`. Running the same NAME again resumes the experiment.
    """
    cfg = load_tune_config(config_path, sets, flags)
    if print_config:
        click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
        return
    from pstyle.tuning import run_search

    summary = run_search(cfg, ray_address=ray_address, log=click.echo)
    for uri in summary["outputs"].values():
        click.echo(f"wrote {uri}")


@click.command("tune")
@click.option(
    "--out", "out_dir", default=Path("runs/bench"), show_default=True, type=click.Path(path_type=Path)
)
@click.option("--trials", default=24, show_default=True)
@click.option("--iterations", default=27, show_default=True, help="max iterations per trial (ASHA max_t)")
@click.option("--steps-per-iteration", default=20, show_default=True)
@click.option(
    "--grace-period",
    default=TuneConfig.grace_period,
    show_default=True,
    help="ASHA: iterations before a trial can stop",
)
@click.option(
    "--reduction-factor",
    default=TuneConfig.reduction_factor,
    show_default=True,
    help="ASHA: keep the best 1/rf at each rung",
)
@click.option("--image-size", default=32, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--ray-address", default="local", show_default=True)
def bench_tune(
    out_dir: Path,
    trials: int,
    iterations: int,
    steps_per_iteration: int,
    image_size: int,
    seed: int,
    grace_period: int,
    reduction_factor: int,
    ray_address: str,
) -> None:
    """ASHA vs no early stopping: trial-iterations to reach within 5 % of the best score; trials/hour."""
    from pstyle.bench import write_result
    from pstyle.bench_tune import bench_config, run_bench_tune, tune_table

    cfg = bench_config(
        trials, iterations, steps_per_iteration, image_size, seed, grace_period, reduction_factor
    )
    with tempfile.TemporaryDirectory(prefix="pstyle-bench-tune-") as store:
        result = run_bench_tune(cfg.with_overrides({"store": store}), ray_address=ray_address, log=click.echo)
    table = tune_table(result)
    click.echo(table)
    click.echo(f"wrote {write_result(result, table, out_dir)}")

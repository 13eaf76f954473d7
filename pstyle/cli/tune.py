"""`pstyle tune`: the Ray Tune search of the base model from the command line.

Its flags are the `flag` fields of TuneConfig, as `ray_jobs/tune_base.py` takes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from pstyle.cli.options import job_from_options, job_options
from pstyle.config import TuneConfig, parse_overrides


@click.command("tune")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="e.g. --set base.train.image_size=32 --set 'space.train.lr_g={low: 1.0e-4, high: 1.0e-3}'",
)
@job_options(TuneConfig)
@click.option("--print-config", is_flag=True, help="print the effective configuration as YAML and exit")
def tune(config_path: Path | None, sets: tuple[str, ...], print_config: bool, **flags: Any) -> None:
    """Multi-objective hyperparameter search of the base model (Ray Tune + Optuna, ASHA).

    Writes the results table, Pareto front + plot and chosen config to the store under tune/NAME/
    (Tune's own files: ray/tune/NAME/) and registers the chosen checkpoint as base MODEL_NAME,
    alias `candidate`. Running the same NAME again resumes the experiment. Settings: defaults, then
    --config, then --set, then the flags.
    """
    cfg = TuneConfig.load(config_path) if config_path else TuneConfig()
    cfg = job_from_options(TuneConfig, flags, cfg.with_overrides(parse_overrides(sets)))
    if print_config:
        click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
        return
    from pstyle.distributed.tune import run_search

    summary = run_search(cfg, log=click.echo)
    for uri in summary["outputs"].values():
        click.echo(f"wrote {uri}")

"""`pstyle loop run`: one run of the feedback loop (retrain from new ratings, A/B test, decide).

Its flags are the `flag` fields of LoopConfig, as `ray_jobs/retrain_from_feedback.py` takes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pstyle.cli.options import job_from_options, job_options
from pstyle.config import LoopConfig, parse_overrides


@click.group()
def loop() -> None:
    """The feedback loop: ratings -> retrained adapters -> A/B experiments -> decisions."""


@loop.command("run")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="a YAML/JSON file of LoopConfig settings")  # fmt: skip
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="e.g. --set personalize.steps=50 --set decide.alpha=0.01")  # fmt: skip
@job_options(LoopConfig)
def loop_run(config_path: Path | None, sets: tuple[str, ...], **flags: Any) -> None:
    """Retrain the adapters of users with enough new ratings since the last run (as `candidate`),
    put them in the running loop experiment (or open one), then decide every running experiment.

    Safe to repeat: the watermark in the store moves only after a run's retraining succeeds. Settings:
    defaults, then --config, then --set, then the flags. Exits 1 if a user's training failed."""
    from pstyle.distributed.feedback_loop import run_loop

    cfg = LoopConfig.load(config_path) if config_path else LoopConfig()
    cfg = job_from_options(LoopConfig, flags, cfg.with_overrides(parse_overrides(sets)))
    result = run_loop(cfg, log=click.echo)
    if result["failed"]:
        raise click.ClickException(f"{len(result['failed'])} users failed: {', '.join(result['failed'])}")

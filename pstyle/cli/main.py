"""The `pstyle` command: the click group, its sub-commands, and one-line errors (the entry point)."""

from __future__ import annotations

import sys

import click

from pstyle.cli.adapters import personalize
from pstyle.cli.bench import bench
from pstyle.cli.data import data
from pstyle.cli.demo import demo
from pstyle.cli.loop import loop
from pstyle.cli.model import (
    bundle_cmd,
    config_group,
    eval_cmd,
    eval_subjects_cmd,
    export_cmd,
    stylize,
    train_base_cmd,
    train_subjects_cmd,
)
from pstyle.cli.options import USER_ERRORS
from pstyle.cli.registry import registry
from pstyle.cli.serving import ab, users
from pstyle.cli.tune import tune


@click.group()
def cli() -> None:
    """pstyle: personalized image style transfer."""


for command in (data, stylize, train_base_cmd, eval_cmd, eval_subjects_cmd, train_subjects_cmd,
                bundle_cmd, export_cmd, config_group, tune, personalize, registry, users, ab, loop, demo,
                bench):  # fmt: skip
    cli.add_command(command)


def main() -> None:
    """Entry point: known user errors become one line on stderr and exit code 1, not a traceback."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except USER_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        click.echo(f"error: {message}", err=True)
        sys.exit(1)

"""Command-line arguments of the `ray_jobs/` entry points, generated from their typed configs.

Every `flag(...)` field of the job's config becomes `--field-name`, with the help written beside the
field, so a job takes the same flags as `pstyle ... --ray` without either defining them twice.
`--config FILE` and `--set KEY=VALUE` fill the settings object the job runs with (the job config
itself for a Tune search, the model or the adapter recipe for training jobs).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pstyle.config import ConfigFile, flag_fields, parse_overrides

J = TypeVar("J", bound=ConfigFile)
S = TypeVar("S", bound=ConfigFile)


def parse_job(
    job_cls: type[J], settings_cls: type[S] | None = None, argv: Sequence[str] | None = None, doc: str = ""
) -> tuple[J, S | J]:
    """(job, settings) from `argv`; without `settings_cls`, --config/--set apply to the job itself."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = (settings_cls or job_cls).__name__
    parser.add_argument("--config", type=Path, help=f"a YAML/JSON file of {what} settings")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override one {what} setting, e.g. --set train.steps=100")  # fmt: skip
    for name, scalar, help_text in flag_fields(job_cls):
        option = "--" + name.replace("_", "-")
        if scalar is bool:
            parser.add_argument(option, dest=name, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(option, dest=name, type=scalar, default=None, help=help_text)
    args = parser.parse_args(argv)
    flags = {
        name: getattr(args, name) for name, _, _ in flag_fields(job_cls) if getattr(args, name) is not None
    }
    try:  # a bad value is one line and exit 2 (argparse's usage error), not a traceback
        if settings_cls is None:
            job = _load(job_cls, args.config).with_overrides(parse_overrides(args.sets) | flags)
            return job, job
        settings = _load(settings_cls, args.config).with_overrides(parse_overrides(args.sets))
        return job_cls().with_overrides(flags), settings
    except (ValueError, KeyError, OSError) as exc:
        parser.error(str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc))


def _load(cls: type[Any], path: Path | None) -> Any:
    return cls.load(path) if path else cls()

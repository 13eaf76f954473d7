"""Option definitions the `pstyle` commands share, so each flag means one thing everywhere."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import torch

from pstyle.config import STORE_HELP, STORE_WHAT, ConfigFile, PStyleConfig, flag_fields, parse_overrides
from pstyle.store import StoreError

C = TypeVar("C", bound=ConfigFile)

# ImageError, CheckpointError and RegistryError are ValueErrors; StoreError: a backend that keeps failing.
USER_ERRORS = (ValueError, KeyError, OSError, StoreError)  # OSError: missing files, a full disk, ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available")
    return torch.device(name)


def load_config(path: Path | None, overrides: tuple[str, ...]) -> PStyleConfig:
    """Defaults, then a YAML/JSON file, then `--set section.key=value` overrides (YAML-typed)."""
    config = PStyleConfig.load(path) if path else PStyleConfig()
    return config.with_overrides(parse_overrides(overrides))


config_options = [
    click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
    click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="e.g. --set train.steps=100"),
]


def with_config(fn):
    for option in reversed(config_options):
        fn = option(fn)
    return fn


# A checkpoint folder, or none for the base model that ships in the package (pstyle/training/bundled.py).
MODEL_OPTION = click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="checkpoint (default: bundled)",
)


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def store_option(default: str | None = None) -> Callable[[Callable], Callable]:
    """`--store` (parameter `store_uri`) for every command; `default` says what None means when a
    command has its own default (the demo's store lives in its output folder)."""
    help_text = STORE_HELP if default is None else f"{STORE_WHAT} [{default}]"
    return click.option("--store", "store_uri", default=None, help=help_text)


def job_options(cls: type, skip: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Click options for every `flag` field of job config `cls` (`--field-name`, default unset), the
    same flags `ray_jobs/` take; `job_from_options` turns the given ones into the config."""

    def decorate(fn: Callable) -> Callable:
        for name, scalar, help_text in reversed(flag_fields(cls)):
            if name in skip:
                continue
            option = "--" + name.replace("_", "-")
            if scalar is bool:
                fn = click.option(option, name, is_flag=True, default=None, help=help_text)(fn)
            else:
                fn = click.option(option, name, type=scalar, default=None, help=help_text)(fn)
        return fn

    return decorate


def job_from_options(cls: type[C], values: dict[str, Any], base: C | None = None) -> C:
    """`base` (default: `cls()`) with the flags the user gave (the rest of `values` is ignored)."""
    names = {name for name, _, _ in flag_fields(cls)}
    given = {name: value for name, value in values.items() if name in names and value is not None}
    return (base if base is not None else cls()).with_overrides(given)


def renamed_option(old: str, new: str, name: str, **kwargs: Any) -> Callable[[Callable], Callable]:
    """Keep an old spelling of option `new` working for one release: hidden, it fills parameter
    `name` and says once on stderr that it is deprecated."""
    hidden = f"_deprecated_{name}"

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **values: Any) -> Any:
            value = values.pop(hidden)
            if value is not None:
                click.echo(f"warning: {old} is deprecated and will be removed; use {new}", err=True)
                values[name] = value
            return fn(*args, **values)

        return click.option(old, hidden, default=None, hidden=True, **kwargs)(wrapper)

    return decorate

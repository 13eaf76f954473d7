"""`pstyle users …` (API keys) and `pstyle ab …` (A/B tests of adapter versions) for the serving app."""

from __future__ import annotations

import json
from typing import Any

import click

from pstyle.cli.options import job_from_options, job_options, renamed_option, store_option
from pstyle.config import DecideConfig
from pstyle.store import open_store


@click.group()
def users() -> None:
    """API keys of the serving app's users."""


@users.command("create")
@click.argument("user_id")
@click.option("--admin", is_flag=True, default=None, help="may call admin endpoints")
@click.option("--rotate", is_flag=True, help="replace an existing key (the old one stops working)")
@store_option()
def users_create(user_id: str, admin: bool | None, rotate: bool, store_uri: str | None) -> None:
    """Create (or --rotate) USER_ID's API key and print it once."""
    from pstyle.serving.api_keys import create_user

    key = create_user(open_store(store_uri), user_id, admin=admin, rotate=rotate)
    click.echo(key)
    click.echo("store this key now: it cannot be shown again (only its hash is kept)", err=True)


@users.command("revoke")
@click.argument("user_id")
@store_option()
def users_revoke(user_id: str, store_uri: str | None) -> None:
    """Delete USER_ID's API key: it stops working on the next request (keys are checked, not cached)."""
    from pstyle.serving.api_keys import ApiKeys

    ApiKeys(open_store(store_uri)).revoke(user_id)
    click.echo(f"revoked {user_id}")


@click.group()
def ab() -> None:
    """A/B tests of adapter versions (aliases such as production vs candidate)."""


def _parse_variant(text: str):  # noqa: ANN202 - a Variant; pstyle.serving.experiments is imported lazily
    """`name=ref:weight` (weight optional, default 1)."""
    from pstyle.serving.experiments import Variant

    name, sep, rest = text.partition("=")
    ref, _, weight = rest.partition(":")
    if not sep or not ref:
        raise ValueError(f"--variant expects name=ref[:weight], got {text!r}")
    try:
        return Variant(name, ref, float(weight) if weight else 1.0)
    except ValueError as exc:
        raise ValueError(f"--variant {text!r}: {exc}") from None


@ab.command("create")
@click.argument("name")
@click.option(
    "--variant",
    "variants",
    multiple=True,
    required=True,
    metavar="NAME=REF[:WEIGHT]",
    help="e.g. control=production:50 (REF: adapter alias or version number); at least two",
)
@click.option("--percent", default=100.0, show_default=True, help="share of the cohort in the experiment")
@click.option("--cohort", "user_list", default=None, help="comma-separated user ids [default: everybody]")
@renamed_option("--users", "--cohort", "user_list")
@store_option()
def ab_create(
    name: str, variants: tuple[str, ...], percent: float, user_list: str | None, store_uri: str | None
) -> None:
    """Start experiment NAME."""
    from pstyle.serving.experiments import Experiment, ExperimentStore

    cohort = [u.strip() for u in user_list.split(",") if u.strip()] if user_list is not None else None
    exp = Experiment(name, tuple(_parse_variant(v) for v in variants), percent=percent, users=cohort)
    ExperimentStore(open_store(store_uri)).create(exp)
    click.echo(
        f"created experiment {name}: " + ", ".join(f"{v.name}={v.ref}:{v.weight:g}" for v in exp.variants)
    )


@ab.command("list")
@store_option()
def ab_list(store_uri: str | None) -> None:
    """Every experiment: status, share, variants, cohort."""
    from pstyle.serving.experiments import ExperimentStore

    for exp in ExperimentStore(open_store(store_uri)).list():
        arms = " ".join(f"{v.name}={v.ref}:{v.weight:g}" for v in exp.variants)
        cohort = "all users" if exp.users is None else f"{len(exp.users)} users"
        click.echo(f"{exp.name:<24}{exp.status:<9}{exp.percent:>6g}%  {arms}  ({cohort})")


@ab.command("stop")
@click.argument("name")
@store_option()
def ab_stop(name: str, store_uri: str | None) -> None:
    """Stop experiment NAME (its events stay for reports)."""
    from pstyle.serving.experiments import ExperimentStore

    ExperimentStore(open_store(store_uri)).stop(name)
    click.echo(f"stopped experiment {name}")


@ab.command("report")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--min-ratings", default=30, show_default=True, help="ratings per variant before a verdict")
@store_option()
def ab_report(name: str, as_json: bool, min_ratings: int, store_uri: str | None) -> None:
    """Exposures, errors, latency and ratings per variant, a significance test and a verdict."""
    from pstyle.serving.experiments import format_report, report

    rep = report(open_store(store_uri), name, min_ratings=min_ratings)
    click.echo(json.dumps(rep, indent=2) if as_json else format_report(rep))


@ab.command("promote")
@click.argument("name")
@click.option("--variant", "force_variant", default=None, help="promote this variant even without a winner")
@click.option("--min-ratings", default=30, show_default=True)
@store_option()
def ab_promote(name: str, force_variant: str | None, min_ratings: int, store_uri: str | None) -> None:
    """Point every exposed user's production alias at the winner's version, then stop NAME."""
    from pstyle.serving.experiments import promote
    from pstyle.store.registry import Registry

    store = open_store(store_uri)
    result = promote(store, Registry(store), name, force_variant=force_variant, min_ratings=min_ratings)
    click.echo(
        f"promoted {result['variant']} ({result['ref']}) of {name}: {result['moved']} users moved, "
        f"{result['unchanged']} already there, {result['missing']} without {result['ref']!r}"
    )
    click.echo(f"experiment {name} stopped")


@ab.command("decide")
@click.option("--experiment", "name", default=None, help="only this experiment [every running one]")
@click.option("--dry-run", is_flag=True, help="say what would be done; change nothing, record no look")
@job_options(DecideConfig)
@store_option()
def ab_decide(name: str | None, dry_run: bool, store_uri: str | None, **flags: Any) -> None:
    """Promote, roll back or keep running each production-vs-candidate experiment: one line each.

    Ratings are tested with alpha spending over the looks taken so far (each run is a look), and a
    candidate that breaks a guardrail (error rate, p99 latency) is rolled back."""
    from pstyle.serving.decisions import decide

    cfg = job_from_options(DecideConfig, flags)
    for decision in decide(open_store(store_uri), cfg, name=name, dry_run=dry_run):
        click.echo(decision.line())

"""`pstyle registry …`: look at, publish, alias, roll back and garbage-collect registry versions."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pstyle.cli.options import store_option
from pstyle.store import open_store
from pstyle.store.registry import KINDS, Registry, describe

kind_argument = click.argument("kind", type=click.Choice(sorted(KINDS)))


def _registry(store_uri: str | None) -> Registry:
    return Registry(open_store(store_uri))


@click.group()
def registry() -> None:
    """Versioned base models and per-user adapters in the artifact store."""


@registry.command("ls")
@kind_argument
@store_option()
def ls_cmd(kind: str, store_uri: str | None) -> None:
    """Owners of KIND (base names or user ids) with their version counts and aliases."""
    reg = _registry(store_uri)
    for owner in reg.owners(kind):
        aliases = " ".join(f"{a}=v{n}" for a, n in sorted(reg.aliases(kind, owner).items()))
        click.echo(f"{owner:<24}{len(reg.versions(kind, owner)):>4} versions  {aliases}")


@registry.command("show")
@kind_argument
@click.argument("owner")
@store_option()
def show_cmd(kind: str, owner: str, store_uri: str | None) -> None:
    """Every version of one owner: created, aliases, metrics."""
    reg = _registry(store_uri)
    versions = [reg.get(kind, owner, n) for n in reg.versions(kind, owner)]
    for row in describe(versions, reg.aliases(kind, owner)):
        aliases = ",".join(row["aliases"]) or "-"
        click.echo(f"v{row['version']:<4} {row['created']}  {aliases:<22} {json.dumps(row['metrics'])}")


@registry.command("publish")
@kind_argument
@click.argument("owner")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--alias", "aliases", multiple=True, help="aliases to point at the new version")
@store_option()
def publish_cmd(
    kind: str, owner: str, directory: Path, aliases: tuple[str, ...], store_uri: str | None
) -> None:
    """Publish a base checkpoint or an adapter directory as OWNER's next version."""
    reg = _registry(store_uri)
    publish = reg.publish_base if kind == "base" else reg.publish_adapter
    version = publish(owner, directory, aliases=aliases)
    click.echo(f"published {version}")


@registry.command("alias")
@kind_argument
@click.argument("owner")
@click.argument("alias")
@click.argument("version", type=int)
@store_option()
def alias_cmd(kind: str, owner: str, alias: str, version: int, store_uri: str | None) -> None:
    """Point ALIAS (e.g. production) at VERSION."""
    _registry(store_uri).set_alias(kind, owner, alias, version)
    click.echo(f"{kind} {owner}: {alias} -> v{version}")


@registry.command("rollback")
@kind_argument
@click.argument("owner")
@click.argument("alias")
@store_option()
def rollback_cmd(kind: str, owner: str, alias: str, store_uri: str | None) -> None:
    """Undo ALIAS's last move."""
    number = _registry(store_uri).rollback(kind, owner, alias)
    click.echo(f"{kind} {owner}: {alias} -> v{number}")


@registry.command("gc")
@click.option("--keep", default=5, show_default=True, help="newest versions kept per owner")
@click.option("--grace", default=3600.0, show_default=True, help="seconds an unreferenced blob is spared")
@store_option()
def gc_cmd(keep: int, grace: float, store_uri: str | None) -> None:
    """Delete old unaliased versions and unreferenced blobs."""
    report = _registry(store_uri).gc(keep_last=keep, grace_s=grace)
    click.echo(f"deleted {report['deleted_versions']} versions, {report['deleted_blobs']} blobs")

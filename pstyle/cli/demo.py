"""`pstyle demo`: the whole pipeline on the embedded default."""

from __future__ import annotations

from pathlib import Path

import click

from pstyle.cli.options import store_option


@click.command()
@click.option(
    "--out", "out_dir", default=Path("runs/demo"), show_default=True, type=click.Path(path_type=Path)
)
@click.option("--tiny", is_flag=True, help="a reduced run (toy sizes), for tests")
@click.option(
    "--keep-serving",
    is_flag=True,
    help="after the report, leave the app up on loopback (web page at /ui/) and print the demo's "
    "API keys; Ctrl-C stops it",
)
@store_option(default="OUT/store")
def demo(out_dir: Path, tiny: bool, keep_serving: bool, store_uri: str | None) -> None:
    """Run the whole pipeline end to end: data, Tune, Ray Train, adapters, Serve + A/B, report.html."""
    from pstyle.demo.pipeline import run_demo

    run_demo(out_dir, tiny=tiny, store=store_uri, log=click.echo, keep_serving=keep_serving)

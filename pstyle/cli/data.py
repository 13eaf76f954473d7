"""`pstyle data …`: make, import and export image datasets."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def data() -> None:
    """Datasets."""


@data.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n-content", default=64, show_default=True)
@click.option("--n-users", default=24, show_default=True)
@click.option("--images-per-user", default=6, show_default=True)
@click.option("--size", default=128, show_default=True)
@click.option("--seed", default=0, show_default=True)
def data_synth(out: Path, n_content: int, n_users: int, images_per_user: int, size: int, seed: int) -> None:
    """Write deterministic synthetic content scenes (with masks) and style users to OUT."""
    from pstyle.data.synth import synthesize

    synthesize(
        out, n_content=n_content, n_users=n_users, images_per_user=images_per_user, size=size, seed=seed
    )
    click.echo(f"wrote {out}")


@data.command("import")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--content", required=True, help="folder or s3://bucket/prefix of photos (COCO-like)")
@click.option("--styles", required=True, help="folder or s3://bucket/prefix, one sub-folder per style")
@click.option("--size", default=256, show_default=True, help="shorter side of the imported images")
def data_import(out: Path, content: str, styles: str, size: int) -> None:
    """Import any image folders (local or S3) into OUT, the layout `pstyle train-base --data` reads."""
    from pstyle.data.importer import import_folders

    click.echo(f"wrote {import_folders(content, styles, out, size)}")


@data.command("eval-photos")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
def data_eval_photos(out: Path) -> None:
    """Write the independent real-photo evaluation set (scikit-image's images) to OUT/content, OUT/styles."""
    from pstyle.data.eval_photos import export

    content, styles = export(out)
    click.echo(f"wrote {content} and {styles}")

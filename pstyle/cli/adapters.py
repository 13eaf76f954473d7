"""`pstyle personalize`: one user's adapter here, or every user of a manifest on Ray Data (--ray).

--base names the base the same way in both modes: `NAME@alias|version` is a base in the registry
(--store), anything else a checkpoint folder. The --ray flags are the `flag` fields of
AdapterJobConfig, as `ray_jobs/train_adapters.py` takes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import torch

from pstyle.cli.options import EXISTING_DIR, job_from_options, job_options
from pstyle.config import AdapterJobConfig, PersonalizeConfig


@click.command()
@click.option(
    "--base", required=True, help="NAME@alias|version (a base in the registry) or a checkpoint folder"
)
@click.option("--user", "user_id", help="required without --ray")
@click.option("--styles", "styles_dir", type=EXISTING_DIR, help="required without --ray")
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="required without --ray"
)
@click.option(
    "--feedback", "feedback_path", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--content", "content_dir", default=None, type=EXISTING_DIR,
              help="content images to train on (default: procedural scenes)")  # fmt: skip
@click.option("--steps", default=None, type=int, help="training steps [PersonalizeConfig().steps]")
@click.option("--ray", "use_ray", is_flag=True, help="fine-tune every user of --users on Ray Data; with it:")
@job_options(AdapterJobConfig, skip=("base",))
def personalize(
    base: str,
    user_id: str | None,
    styles_dir: Path | None,
    out_dir: Path | None,
    feedback_path: Path | None,
    content_dir: Path | None,
    steps: int | None,
    use_ray: bool,
    **job_flags: Any,
) -> None:
    """Fine-tune USER's adapter on their style images; prints before/after held-out metrics.

    With --ray: every user of --users, on Ray Data actors, published to the registry (alias candidate);
    exits 1 if any user failed to train (users skipped for bad data are reported, not failures)."""
    cfg = PersonalizeConfig() if steps is None else PersonalizeConfig(steps=steps)
    if use_ray:
        return _personalize_on_ray(registry_ref(base), cfg, job_flags)
    given = sorted(name for name, value in job_flags.items() if value is not None and name != "store")
    if given:
        raise click.UsageError(f"--{given[0].replace('_', '-')} is an adapter-job setting: add --ray")
    if not (user_id and styles_dir and out_dir):
        raise click.UsageError("--user, --styles and --out are required without --ray")
    from pstyle.adapters.personalize import Feedback, personalize_user
    from pstyle.data.folders import ContentFolder, load_style_images
    from pstyle.data.synth import scene_tensors
    from pstyle.ids import validate_id
    from pstyle.images import list_images
    from pstyle.training.checkpoint import read_meta

    validate_id(user_id)
    base_dir = base_folder(base, job_flags["store"])
    size = read_meta(base_dir)["config"]["train"]["image_size"]
    paths = list_images(styles_dir)
    if not paths:
        raise ValueError(f"{styles_dir}: no images")
    styles = load_style_images(paths, size)
    if content_dir:
        folder = ContentFolder(content_dir, size)
        content = torch.stack([folder[i]["image"] for i in range(len(folder))])
    else:
        content = scene_tensors(AdapterJobConfig.n_content, size)
    feedback = Feedback.load(feedback_path, size) if feedback_path else None
    meta = personalize_user(base_dir, user_id, styles, content, out_dir, cfg, feedback)
    before, after = meta["metrics"]["before"], meta["metrics"]["after"]
    click.echo(f"{'':<8}{'SWD x1e3':>10}{'SSIM':>8}   (held-out style images of {user_id})")
    for name, m in (("base", before), ("adapter", after)):
        click.echo(f"{name:<8}{m['swd']:>10.2f}{m['ssim']:>8.3f}")
    click.echo(f"adapter written to {out_dir}")


def registry_ref(base: str) -> str:
    """--base for a Ray job: a registry reference. A bare NAME (the old spelling) still means its
    latest version, with a warning; a folder is refused, since workers on other machines cannot read it."""
    if "@" in base:
        return base
    if Path(base).exists():
        raise click.UsageError(f"--ray trains on a base in the registry (NAME@alias); {base!r} is a folder")
    click.echo(f"warning: --base {base} is deprecated; write {base}@latest", err=True)
    return f"{base}@latest"


def base_folder(base: str, store: str | None) -> Path:
    """A checkpoint folder for --base: the folder itself, or the registry version fetched into a cache."""
    if "@" not in base:
        return Path(base)
    from pstyle.store import open_store
    from pstyle.store.registry import Registry, parse_ref

    registry = Registry(open_store(store))
    return registry.fetch_cached(registry.resolve("base", *parse_ref(base)))


def _personalize_on_ray(base: str, cfg: PersonalizeConfig, job_flags: dict[str, Any]) -> None:
    from pstyle.distributed.adapter_jobs import run_adapter_job

    job = job_from_options(AdapterJobConfig, {**job_flags, "base": base})
    if not job.users:
        raise click.UsageError("--ray needs --users (a manifest or a folder of users)")
    summary = run_adapter_job(job, cfg, log=click.echo)
    if summary["failed"]:
        raise click.ClickException(f"{len(summary['failed'])} users failed: {', '.join(summary['failed'])}")

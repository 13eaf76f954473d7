"""`pstyle stylize`, `train-base`, `eval`, `eval-subjects`, `bundle`, `export`, `config`: the base model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import torch
import yaml

from pstyle.cli.options import (
    EXISTING_DIR,
    MODEL_OPTION,
    job_from_options,
    job_options,
    load_config,
    renamed_option,
    resolve_device,
    with_config,
)
from pstyle.config import ExportConfig, SubjectTrainConfig, TrainJob


@click.command("eval-subjects")
@click.option("--split", type=click.Choice(["eval", "dev"]), default="eval", show_default=True)
@click.option(
    "--grabcut-seeds", type=click.IntRange(min=1), default=1, show_default=True,
    help="baseline: also score GrabCut seeds 1..N-1 and report their mean: one seed's figure can be luck",
)  # fmt: skip
@click.option(
    "--grid", type=click.Path(dir_okay=False, path_type=Path),
    help="also write a PNG of the subject head's masks over the photos, with the labels' outlines",
)  # fmt: skip
@MODEL_OPTION
def eval_subjects_cmd(split: str, grabcut_seeds: int, grid: Path | None, model_dir: Path | None) -> None:
    """IoU of --mask subject against hand-labelled photos: the subject head + face prior, against the
    CAM + face prior + GrabCut baseline and the base's U-Net."""
    from functools import partial

    from pstyle.evaluation.subjects import mask_grid, subject_iou
    from pstyle.models.subjects import cam_grabcut_mask, subject_mask
    from pstyle.training.bundled import resolve_model_dir
    from pstyle.training.checkpoint import load_checkpoint

    model, _ = load_checkpoint(resolve_model_dir(model_dir))
    model.eval()

    def unet(photo: torch.Tensor) -> torch.Tensor:
        h, w = photo.shape[-2:]
        small = torch.nn.functional.interpolate(photo, scale_factor=256 / min(h, w), mode="area")
        small = small[..., : small.shape[-2] // 4 * 4, : small.shape[-1] // 4 * 4]
        return torch.nn.functional.interpolate(model.subject_mask(small), size=(h, w), mode="nearest")

    results = {
        "head+faces": subject_iou(subject_mask, split),
        "cam+grabcut": subject_iou(cam_grabcut_mask, split),
    }
    names = list(results["head+faces"])
    if grabcut_seeds > 1:
        runs = [results["cam+grabcut"]]
        runs += [subject_iou(partial(cam_grabcut_mask, seed=seed), split) for seed in range(1, grabcut_seeds)]
        results[f"seed mean ({grabcut_seeds})"] = {n: sum(r[n] for r in runs) / len(runs) for n in names}
        results["seed min"] = {n: min(r[n] for r in runs) for n in names}
    results["unet"] = subject_iou(unet, split)
    click.echo(f"{'photo':<14}" + "".join(f"{m:>16}" for m in results))
    for name in names:
        click.echo(f"{name:<14}" + "".join(f"{results[m][name]:>16.3f}" for m in results))
    if grid is not None:
        mask_grid(subject_mask, split, grid)
        click.echo(f"grid in {grid}")


@click.command("train-subjects")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="weights file")
@click.option("--install", is_flag=True, help="write the bundled subject head and pin it (maintainers)")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto")
@job_options(SubjectTrainConfig)
def train_subjects_cmd(out_path: Path | None, install: bool, device: str, **flags: Any) -> None:
    """Train the subject head on cutouts pasted onto backgrounds (Debian: tuxpaint-stamps-default and
    gnome-backgrounds, plasma-workspace-wallpapers, ukui-wallpapers)."""
    from pstyle.models.subject_head import BUNDLED
    from pstyle.pinned import pin
    from pstyle.training.subject_head import train_subject_head

    if install == (out_path is not None):
        raise click.UsageError("give exactly one of --out FILE or --install")
    target = BUNDLED if install else out_path
    result = train_subject_head(job_from_options(SubjectTrainConfig, flags), target, resolve_device(device))
    if install:
        pin([target])
    click.echo(
        f"{result['cutouts']} cutouts on {result['backgrounds']} backgrounds; held-out cutouts IoU "
        f"{result['iou_before']:.3f} -> {result['iou_after']:.3f}; weights in {target}"
    )


@click.command("bundle")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
def bundle_cmd(checkpoint: Path) -> None:
    """Install CHECKPOINT as the bundled base model and pin its sha256 (maintainers)."""
    from pstyle.training.bundled import bundle

    click.echo(f"bundled into {bundle(checkpoint)}")


@click.command("export")
@MODEL_OPTION
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@job_options(ExportConfig)
def export_cmd(model_dir: Path | None, out_dir: Path, **flags: Any) -> None:
    """Write a serving variant of a base checkpoint (int8, pruned, compiled or onnx) to OUT."""
    from pstyle.training.bundled import resolve_model_dir
    from pstyle.training.variants import export_variant

    config = job_from_options(ExportConfig, flags)
    if out_dir.exists():
        raise click.UsageError(f"{out_dir} already exists: choose a new folder")
    meta = export_variant(resolve_model_dir(model_dir), out_dir, config)
    click.echo(f"{config.format} variant in {out_dir} ({meta['variant']['export_s']} s)")
    click.echo(f"publish it: pstyle registry publish base NAME {out_dir}")


@click.group("config")
def config_group() -> None:
    """Configuration."""


@config_group.command("show")
@with_config
def config_show(config_path: Path | None, overrides: tuple[str, ...]) -> None:
    """Print the effective configuration as YAML (defaults + file + overrides)."""
    click.echo(yaml.safe_dump(load_config(config_path, overrides).to_dict(), sort_keys=False), nl=False)


@click.command("train-base")
@click.option(
    "--data",
    "data_dir",
    default=None,
    type=EXISTING_DIR,
    help="dataset folder (with --ray, the streamed input flags may replace it)",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="checkpoint folder (required without --ray; with --ray the final checkpoint is copied there)",
)
@click.option("--device", default="auto", show_default=True, help="without --ray: cpu, cuda or auto")
@with_config
@click.option(
    "--ray", "use_ray", is_flag=True, help="data-parallel training on Ray Train; these flags with it:"
)
@job_options(TrainJob, skip=("data", "out"))
def train_base_cmd(
    data_dir: Path | None,
    out_dir: Path | None,
    device: str,
    config_path: Path | None,
    overrides: tuple[str, ...],
    use_ray: bool,
    **job_flags: Any,
) -> None:
    """Train the base model (resumes from OUT's last checkpoint; with --ray, from run NAME's)."""
    config = load_config(config_path, overrides)
    given = sorted(name for name, value in job_flags.items() if value is not None)
    if use_ray:
        from pstyle.distributed.train import run_base_training

        job = job_from_options(
            TrainJob, {**job_flags, "data": str(data_dir or ""), "out": out_dir and str(out_dir)}
        )
        outcome = run_base_training(config, job, log=click.echo)
        click.echo(f"run {outcome.run_path}, checkpoint {outcome.checkpoint_path}")
        return
    if given:
        raise click.UsageError(f"--{given[0].replace('_', '-')} is a Ray Train setting: add --ray")
    if data_dir is None or out_dir is None:
        raise click.UsageError(f"--{'data' if data_dir is None else 'out'} is required without --ray")
    from pstyle.training.trainer import train_base

    train_base(config, data_dir, out_dir, str(resolve_device(device)))
    click.echo(f"checkpoint in {out_dir}")


@click.command()
@click.argument("content", type=click.Path(path_type=Path))
@MODEL_OPTION
@click.option("--style", "style_paths", multiple=True, type=click.Path(path_type=Path))
@click.option(
    "--adapter",
    "adapter_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="a user's adapter directory: its LoRA weights and learned style code replace --style",
)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--strength", default=1.0, show_default=True, type=click.FloatRange(0, 1))
@click.option("--seed", default=0, show_default=True)
@click.option("--mask", default=None, help="'subject', 'background', or a mask image (white = stylize)")
@click.option("--size", default=None, type=int, help="resize the content's shorter side (multiple of 16)")
@click.option(
    "--segmenter",
    "segmenter_weights",
    default=None,
    help="U-Net segmenter weights for --mask subject|background (safetensors path or s3:// URI)",
)
@click.option("--device", default="auto", show_default=True)
def stylize(
    content: Path,
    model_dir: Path | None,
    style_paths: tuple[Path, ...],
    output: Path,
    strength: float,
    seed: int,
    mask: str | None,
    size: int | None,
    segmenter_weights: str | None,
    device: str,
    adapter_dir: Path | None,
) -> None:
    """Render CONTENT in the style of the --style images, or with a user's --adapter."""
    from pstyle.serving.stylize import stylize_file

    if bool(style_paths) == bool(adapter_dir):
        raise ValueError("give either --style images or an --adapter directory")
    stylize_file(
        content,
        model_dir,
        list(style_paths),
        output,
        adapter_dir=adapter_dir,
        strength=strength,
        seed=seed,
        mask=mask,
        size=size,
        device=resolve_device(device),
        segmenter_weights=segmenter_weights,
    )
    click.echo(f"wrote {output}")


@click.command("eval")
@MODEL_OPTION
@click.option(
    "--data",
    "data_dir",
    default=None,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="a `pstyle data synth` folder: held-out style images per user",
)
@click.option("--content", "content_dir", default=None, type=EXISTING_DIR,
              help="real-photo mode: a folder of content photos (with --styles)")  # fmt: skip
@click.option("--styles", "styles_dir", default=None, type=EXISTING_DIR,
              help="real-photo mode: a folder of style images, each its own style")  # fmt: skip
@click.option("--adapter", "adapter_dir", default=None, type=click.Path(exists=True, path_type=Path),
              help="real-photo mode: also score this user's adapter (their styles as --styles)")  # fmt: skip
@click.option("--size", default=256, show_default=True, help="real-photo mode: shorter side in px")
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--n-users", "n_users", default=8, show_default=True, help="synthetic mode: users scored")
@renamed_option("--users", "--n-users", "n_users", type=int)
@click.option("--n-content", "n_content", default=8, show_default=True)
def eval_cmd(
    model_dir: Path | None,
    data_dir: Path | None,
    content_dir: Path | None,
    styles_dir: Path | None,
    adapter_dir: Path | None,
    size: int,
    out_path: Path | None,
    n_users: int,
    n_content: int,
) -> None:
    """Score the model against the identity and Reinhard baselines (table, JSON and, on photos, a grid)."""
    from pstyle.training.bundled import resolve_model_dir
    from pstyle.training.checkpoint import load_checkpoint

    model_dir = resolve_model_dir(model_dir)
    model, meta = load_checkpoint(model_dir)
    model.eval()
    if (content_dir is None) != (styles_dir is None) or (content_dir is None) == (data_dir is None):
        raise click.UsageError("give either --data DIR or both --content DIR and --styles DIR")
    if data_dir is not None:
        from pstyle.evaluation.synthetic import evaluate_model, format_table, write_report

        report = evaluate_model(model, data_dir, meta["config"]["train"]["image_size"], n_users, n_content)
        click.echo(format_table(report))
        write_report(report, out_path or Path(model_dir) / "eval.json")
        return
    from pstyle.evaluation.photos import (
        evaluate_photos,
        format_photo_table,
        load_photos,
        photo_methods,
        write_photo_grid,
        write_photo_report,
    )

    methods = photo_methods(model, adapter_dir)
    contents, styles = load_photos(content_dir, size), load_photos(styles_dir, size)
    report = evaluate_photos(methods, contents, styles)
    click.echo(format_photo_table(report))
    out_path = out_path or Path("runs/eval/photos.json")
    write_photo_report(report, out_path)
    shown = {
        name: method for name, method in methods.items() if name != "identity"
    }  # the content is column 1
    grid = write_photo_grid(shown, contents, styles, out_path.with_suffix(".png"))
    click.echo(f"wrote {out_path} and {grid}")

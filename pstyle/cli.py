"""The `pstyle` command line. Thin: parses arguments, calls the library, reports in one line on error."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import torch
import yaml

from pstyle.cli_adapters import bench_adapters_train, personalize_ray, with_ray_personalize_options
from pstyle.cli_registry import registry
from pstyle.cli_serving import ab, users
from pstyle.cli_train import bench_train, train_base_ray, with_ray_options
from pstyle.cli_tune import bench_tune, tune
from pstyle.config import PStyleConfig
from pstyle.store import StoreError

# ImageError, CheckpointError and RegistryError are ValueErrors; StoreError: a backend that keeps failing.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, StoreError)


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


def parse_overrides(items: tuple[str, ...]) -> dict:
    """`--set key=value` items as {key: value}, each value read as YAML (numbers, lists, null...)."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        parsed[key] = yaml.safe_load(value)
    return parsed


config_options = [
    click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
    click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="e.g. --set train.steps=100"),
]


def with_config(fn):
    for option in reversed(config_options):
        fn = option(fn)
    return fn


# A checkpoint folder, or none for the base model that ships in the package (pstyle/bundled.py).
MODEL_OPTION = click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="checkpoint (default: bundled)",
)


@click.group()
def cli() -> None:
    """pstyle: personalized image style transfer."""


cli.add_command(registry)
cli.add_command(users)
cli.add_command(ab)
cli.add_command(tune)


@cli.group()
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


@cli.command("eval-subjects")
@click.option("--split", type=click.Choice(["eval", "dev"]), default="eval", show_default=True)
@MODEL_OPTION
def eval_subjects_cmd(split: str, model_dir: Path | None) -> None:
    """IoU of --mask subject against hand-labelled photos: CAM + face prior + GrabCut vs the U-Net."""
    from pstyle.bundled import resolve_model_dir
    from pstyle.checkpoint import load_checkpoint
    from pstyle.subjects import subject_mask
    from pstyle.subjects_eval import subject_iou

    model, _ = load_checkpoint(resolve_model_dir(model_dir))
    model.eval()

    def unet(photo: torch.Tensor) -> torch.Tensor:
        h, w = photo.shape[-2:]
        small = torch.nn.functional.interpolate(photo, scale_factor=256 / min(h, w), mode="area")
        small = small[..., : small.shape[-2] // 4 * 4, : small.shape[-1] // 4 * 4]
        return torch.nn.functional.interpolate(model.subject_mask(small), size=(h, w), mode="nearest")

    results = {"prior+grabcut": subject_iou(subject_mask, split), "unet": subject_iou(unet, split)}
    names = list(results["unet"])
    click.echo(f"{'photo':<14}" + "".join(f"{m:>14}" for m in results))
    for name in names:
        click.echo(f"{name:<14}" + "".join(f"{results[m][name]:>14.3f}" for m in results))


@cli.command("bundle")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
def bundle_cmd(checkpoint: Path) -> None:
    """Install CHECKPOINT as the bundled base model and pin its sha256 (maintainers)."""
    from pstyle.bundled import bundle

    click.echo(f"bundled into {bundle(checkpoint)}")


@cli.group("config")
def config_group() -> None:
    """Configuration."""


@config_group.command("show")
@with_config
def config_show(config_path: Path | None, overrides: tuple[str, ...]) -> None:
    """Print the effective configuration as YAML (defaults + file + overrides)."""
    click.echo(yaml.safe_dump(load_config(config_path, overrides).to_dict(), sort_keys=False), nl=False)


@cli.command("train-base")
@click.option(
    "--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="checkpoint folder (required without --ray; with --ray the final checkpoint is copied there)",
)
@click.option("--device", default="auto", show_default=True)
@with_config
@with_ray_options
def train_base_cmd(
    data_dir: Path,
    out_dir: Path | None,
    device: str,
    config_path: Path | None,
    overrides: tuple[str, ...],
    **ray_opts,
) -> None:
    """Train the base model (resumes from OUT's last checkpoint; with --ray, from run NAME's)."""
    from pstyle.train import train_base

    if ray_opts["use_ray"]:
        return train_base_ray(load_config(config_path, overrides), data_dir, out_dir, **ray_opts)
    if out_dir is None:
        raise click.UsageError("--out is required without --ray")
    train_base(load_config(config_path, overrides), data_dir, out_dir, str(resolve_device(device)))
    click.echo(f"checkpoint in {out_dir}")


@cli.command()
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
    from pstyle.inference import stylize_file

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


@cli.command()
@click.option(
    "--base",
    "base_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="base checkpoint dir (with --ray: NAME[@alias|version] in the registry)",
)
@click.option("--user", "user_id", help="required without --ray")
@click.option(
    "--styles",
    "styles_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="required without --ray",
)
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="required without --ray"
)
@click.option(
    "--feedback", "feedback_path", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--content",
    "content_dir",
    default=None,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="content images to train on (default: procedural scenes)",
)
@click.option("--steps", default=None, type=int)
@with_ray_personalize_options
def personalize(
    base_dir: Path,
    user_id: str | None,
    styles_dir: Path | None,
    out_dir: Path | None,
    feedback_path: Path | None,
    content_dir: Path | None,
    steps: int | None,
    **ray_opts,
) -> None:
    """Fine-tune USER's adapter on their style images; prints before/after held-out metrics.

    With --ray: every user of --users, on Ray Train, published to the registry (alias candidate)."""
    if ray_opts["use_ray"]:
        return personalize_ray(str(base_dir), steps, **ray_opts)
    if not (user_id and styles_dir and out_dir):
        raise click.UsageError("--user, --styles and --out are required without --ray")
    from pstyle.checkpoint import read_meta
    from pstyle.data.folders import ContentFolder, load_style_images
    from pstyle.data.synth import scene_tensors
    from pstyle.ids import validate_id
    from pstyle.images import list_images
    from pstyle.personalize import Feedback, PersonalizeConfig, personalize_user

    validate_id(user_id)
    size = read_meta(base_dir)["config"]["train"]["image_size"]
    paths = list_images(styles_dir)
    if not paths:
        raise ValueError(f"{styles_dir}: no images")
    styles = load_style_images(paths, size)
    if content_dir:
        folder = ContentFolder(content_dir, size)
        content = torch.stack([folder[i]["image"] for i in range(len(folder))])
    else:
        content = scene_tensors(32, size)
    cfg = PersonalizeConfig() if steps is None else PersonalizeConfig(steps=steps)
    feedback = Feedback.load(feedback_path, size) if feedback_path else None
    meta = personalize_user(base_dir, user_id, styles, content, out_dir, cfg, feedback)
    before, after = meta["metrics"]["before"], meta["metrics"]["after"]
    click.echo(f"{'':<8}{'SWD x1e3':>10}{'SSIM':>8}   (held-out style images of {user_id})")
    for name, m in (("base", before), ("adapter", after)):
        click.echo(f"{name:<8}{m['swd']:>10.2f}{m['ssim']:>8.3f}")
    click.echo(f"adapter written to {out_dir}")


EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@cli.command("eval")
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
@click.option("--users", default=8, show_default=True)
@click.option("--n-content", "n_content", default=8, show_default=True)
def eval_cmd(
    model_dir: Path | None,
    data_dir: Path | None,
    content_dir: Path | None,
    styles_dir: Path | None,
    adapter_dir: Path | None,
    size: int,
    out_path: Path | None,
    users: int,
    n_content: int,
) -> None:
    """Score the model against the identity and Reinhard baselines (table, JSON and, on photos, a grid)."""
    from pstyle.bundled import resolve_model_dir
    from pstyle.checkpoint import load_checkpoint

    model_dir = resolve_model_dir(model_dir)
    model, meta = load_checkpoint(model_dir)
    model.eval()
    if (content_dir is None) != (styles_dir is None) or (content_dir is None) == (data_dir is None):
        raise click.UsageError("give either --data DIR or both --content DIR and --styles DIR")
    if data_dir is not None:
        from pstyle.evaluate import evaluate_model, format_table, write_report

        report = evaluate_model(model, data_dir, meta["config"]["train"]["image_size"], users, n_content)
        click.echo(format_table(report))
        write_report(report, out_path or Path(model_dir) / "eval.json")
        return
    from pstyle.evaluate_photos import (
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


@cli.command()
@click.option(
    "--out", "out_dir", default=Path("runs/demo"), show_default=True, type=click.Path(path_type=Path)
)
@click.option("--tiny", is_flag=True, help="a reduced run (toy sizes), for tests")
@click.option(
    "--store",
    "store_uri",
    default=None,
    help="artifact store (folder or s3://bucket/prefix); default OUT/store",
)
def demo(out_dir: Path, tiny: bool, store_uri: str | None) -> None:
    """Run the whole pipeline end to end: data, Tune, Ray Train, adapters, Serve + A/B, report.html."""
    from pstyle.demo import run_demo

    run_demo(out_dir, tiny=tiny, store=store_uri, log=click.echo)


@cli.group()
def bench() -> None:
    """Benchmarks (JSON + table)."""


bench.add_command(bench_tune)
bench.add_command(bench_train)
bench.add_command(bench_adapters_train)


@bench.command("generator")
@click.option(
    "--out", "out_dir", default=Path("runs/bench"), show_default=True, type=click.Path(path_type=Path)
)
@click.option("--device", default="auto", show_default=True)
@click.option("--min-time", default=1.0, show_default=True, help="seconds of timing per configuration")
@click.option("--sizes", default="128,256", show_default=True)
@click.option("--batches", default="1,16", show_default=True)
def bench_generator_cmd(out_dir: Path, device: str, min_time: float, sizes: str, batches: str) -> None:
    """Generator images/s and ms/img (default: 128 and 256 px, batch 1 and 16)."""
    from pstyle.bench import bench_generator, generator_table, write_result

    result = bench_generator(
        resolve_device(device), sizes=_int_list(sizes), batches=_int_list(batches), min_time=min_time
    )
    table = generator_table(result)
    click.echo(table)
    click.echo(f"wrote {write_result(result, table, out_dir)}")


@bench.command("real-users")
@click.option(
    "--out", "out_dir", default=Path("runs/bench"), show_default=True, type=click.Path(path_type=Path)
)
@MODEL_OPTION
@click.option("--size", default=128, show_default=True)
@click.option("--steps", default=None, type=int, help="default: PersonalizeConfig().steps")
def bench_real_users_cmd(out_dir: Path, model_dir: Path | None, size: int, steps: int | None) -> None:
    """Adapters for 4 users whose styles are real images: held-out style distance and SSIM vs the base."""
    from pstyle.bench import write_result
    from pstyle.bench_real_users import bench_real_users, real_users_table
    from pstyle.bundled import resolve_model_dir

    result = bench_real_users(resolve_model_dir(model_dir), size, steps)
    table = real_users_table(result)
    click.echo(table)
    click.echo(f"wrote {write_result(result, table, out_dir)}")


@bench.command("adapters")
@click.option(
    "--out", "out_dir", default=Path("runs/bench"), show_default=True, type=click.Path(path_type=Path)
)
@click.option("--device", default="auto", show_default=True)
@click.option("--sizes", default="128,256", show_default=True)
@click.option("--batch", default=64, show_default=True)
@click.option("--ks", default="1,8,64", show_default=True, help="distinct adapters per batch")
@click.option("--min-time", default=1.0, show_default=True)
@click.option("--load-trials", default=200, show_default=True)
def bench_adapters_cmd(
    out_dir: Path, device: str, sizes: str, batch: int, ks: str, min_time: float, load_trials: int
) -> None:
    """Throughput of base / merged / mixed / grouped adapter paths, adapter load time and bytes."""
    from pstyle.bench import write_result
    from pstyle.bench_adapters import adapters_table, bench_adapters

    result = bench_adapters(
        resolve_device(device),
        sizes=_int_list(sizes),
        batch=batch,
        ks=_int_list(ks),
        min_time=min_time,
        load_trials=load_trials,
    )
    table = adapters_table(result)
    click.echo(table)
    click.echo(f"wrote {write_result(result, table, out_dir)}")


@bench.command("store")
@click.option(
    "--out", "out_dir", default=Path("runs/bench"), show_default=True, type=click.Path(path_type=Path)
)
@click.option("--trials", default=50, show_default=True)
@click.option(
    "--s3", "s3_uri", default=None, help="an s3://bucket/prefix to measure [default: a loopback moto_server]"
)
def bench_store_cmd(out_dir: Path, trials: int, s3_uri: str | None) -> None:
    """Registry publish/load latency (p50/p99) of a rank-8 adapter, local folder and S3."""
    import tempfile
    from contextlib import ExitStack

    from pstyle.bench import write_result
    from pstyle.bench_store import bench_store, store_table
    from pstyle.store import LocalStore, open_store
    from pstyle.store.moto import loopback_s3_env

    with ExitStack() as stack:
        local = LocalStore(stack.enter_context(tempfile.TemporaryDirectory()))
        if s3_uri is None:
            stack.enter_context(loopback_s3_env("bench"))
            s3_uri = "s3://bench/pstyle"
        result = bench_store({"local": local, "s3": open_store(s3_uri)}, trials=trials)
    table = store_table(result)
    click.echo(table)
    click.echo(f"wrote {write_result(result, table, out_dir)}")


@bench.command("serve", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_serve_cmd(args: tuple[str, ...]) -> None:
    """The Serve app over loopback HTTP (runs `python -m serve.bench ARGS`; see --help there)."""
    import subprocess

    if not Path("serve/bench.py").is_file():
        raise FileNotFoundError("serve/bench.py not found: run `pstyle bench serve` from a pstyle checkout")
    sys.exit(subprocess.call([sys.executable, "-m", "serve.bench", *args]))


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


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

"""`pstyle bench …`: every benchmark, each writing JSON plus a table."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from pstyle.cli.options import EXISTING_DIR, MODEL_OPTION, int_list, renamed_option, resolve_device
from pstyle.config import TuneConfig

out_option = click.option(
    "--out", "out_dir", default=Path("runs/bench"), show_default=True, type=click.Path(path_type=Path)
)


def show(result: dict, table: str, out_dir: Path) -> None:
    """Print a benchmark's table and write it with its JSON under `out_dir`."""
    from pstyle.bench.common import write_result

    click.echo(table)
    click.echo(f"wrote {write_result(result, table, out_dir)}")


@click.group()
def bench() -> None:
    """Benchmarks (JSON + table)."""


@bench.command("generator")
@out_option
@click.option("--device", default="auto", show_default=True)
@click.option("--min-time", default=1.0, show_default=True, help="seconds of timing per configuration")
@click.option("--sizes", default="128,256", show_default=True)
@click.option("--batches", default="1,16", show_default=True)
@click.option(
    "--variants", is_flag=True, help="fp32 vs int8, pruned, compiled and onnx: speed and real-photo quality"
)
@MODEL_OPTION
@click.option("--exported", default=None, type=EXISTING_DIR, help="--variants: a folder of <format>/ exports")
@click.option("--grid", default=None, type=click.Path(dir_okay=False, path_type=Path), help="--variants: PNG")
def bench_generator_cmd(
    out_dir: Path,
    device: str,
    min_time: float,
    sizes: str,
    batches: str,
    variants: bool,
    model_dir: Path | None,
    exported: Path | None,
    grid: Path | None,
) -> None:
    """Generator images/s and ms/img (default: 128 and 256 px, batch 1 and 16), or with --variants
    each serving variant against fp32 on CPU (the first size and batch)."""
    from pstyle.bench.common import bench_generator, generator_table

    if variants:
        from pstyle.bench.variants import bench_variants, variants_table
        from pstyle.training.bundled import resolve_model_dir

        size, batch = int_list(sizes)[-1], int_list(batches)[0]
        result = bench_variants(
            resolve_model_dir(model_dir), exported, size, batch, min_time=min_time, grid=grid
        )
        show(result, variants_table(result), out_dir)
        return
    result = bench_generator(
        resolve_device(device), sizes=int_list(sizes), batches=int_list(batches), min_time=min_time
    )
    show(result, generator_table(result), out_dir)


@bench.command("real-users")
@out_option
@MODEL_OPTION
@click.option("--size", default=128, show_default=True)
@click.option("--steps", default=None, type=int, help="default: PersonalizeConfig().steps")
@click.option(
    "--grid", default=None, type=click.Path(path_type=Path), help="PNG: style | content, base, adapter"
)
@click.option(
    "--oracle-steps", default=0, show_default=True, type=click.IntRange(min=0),
    help="also the room under the SSIM cap: steps of per-image optimisation (0: skip)",
)  # fmt: skip
@click.option(
    "--seeds", default=1, show_default=True, type=click.IntRange(min=1),
    help="repeat over this many held-out splits (PersonalizeConfig.seed 0..N-1) and report the means",
)  # fmt: skip
@click.option(
    "--wallpapers", default=0, show_default=True, type=click.IntRange(min=0),
    help="instead of the 4 package images: N users drawn at random from Debian's installed wallpapers",
)  # fmt: skip
def bench_real_users_cmd(
    out_dir: Path,
    model_dir: Path | None,
    size: int,
    steps: int | None,
    grid: Path | None,
    oracle_steps: int,
    seeds: int,
    wallpapers: int,
) -> None:
    """Adapters for users whose styles are real images: held-out style distance and SSIM vs the base."""
    from pstyle.bench.real_users import bench_real_users, real_users_table
    from pstyle.config import WALLPAPER_DIRS
    from pstyle.data.photos import real_style_users, wallpaper_style_users
    from pstyle.training.bundled import resolve_model_dir

    wallpaper_dirs = [Path(folder) for folder in WALLPAPER_DIRS]
    users = wallpaper_style_users(wallpapers, wallpaper_dirs, size) if wallpapers else real_style_users(size)
    result = bench_real_users(
        resolve_model_dir(model_dir), users, size, steps, grid=grid, oracle_steps=oracle_steps, seeds=seeds
    )
    show(result, real_users_table(result), out_dir)


@bench.command("chaos")
@out_option
@click.option("--down", "down_s", default=20.0, show_default=True, help="seconds the S3 endpoint is gone")
@click.option("--delay", "delay_s", default=2.0, show_default=True, help="seconds added to each S3 request")
@click.option("--phase", "phase_s", default=15.0, show_default=True, help="seconds of load per slow-S3 phase")
def bench_chaos_cmd(out_dir: Path, down_s: float, delay_s: float, phase_s: float) -> None:
    """Store faults (S3 down, S3 slow) under loopback load on the real app: statuses, p99, recovery, loss."""
    import subprocess

    from pstyle.demo.pipeline import serve_app_root

    args = [
        "--down",
        str(down_s),
        "--delay",
        str(delay_s),
        "--phase",
        str(phase_s),
        "--out",
        str(out_dir.resolve()),
    ]
    sys.exit(subprocess.call([sys.executable, "-m", "pstyle.bench.chaos", *args], cwd=serve_app_root()))


@bench.command("adapters")
@out_option
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
    from pstyle.bench.adapters import adapters_table, bench_adapters

    result = bench_adapters(
        resolve_device(device),
        sizes=int_list(sizes),
        batch=batch,
        ks=int_list(ks),
        min_time=min_time,
        load_trials=load_trials,
    )
    show(result, adapters_table(result), out_dir)


@bench.command("store")
@out_option
@click.option("--trials", default=50, show_default=True)
@click.option(
    "--s3", "s3_uri", default=None, help="an s3://bucket/prefix to measure [default: a loopback moto_server]"
)
def bench_store_cmd(out_dir: Path, trials: int, s3_uri: str | None) -> None:
    """Registry publish/load latency (p50/p99) of a rank-8 adapter, local folder and S3."""
    import tempfile
    from contextlib import ExitStack

    from pstyle.bench.loopback_s3 import loopback_s3_env
    from pstyle.bench.store import bench_store, store_table
    from pstyle.store import LocalStore, open_store

    with ExitStack() as stack:
        local = LocalStore(stack.enter_context(tempfile.TemporaryDirectory()))
        if s3_uri is None:
            stack.enter_context(loopback_s3_env("bench"))
            s3_uri = "s3://bench/pstyle"
        result = bench_store({"local": local, "s3": open_store(s3_uri)}, trials=trials)
    show(result, store_table(result), out_dir)


@bench.command("serve", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_serve_cmd(args: tuple[str, ...]) -> None:
    """The Serve app over loopback HTTP (runs `python -m pstyle.bench.serve_http ARGS`; see --help there)."""
    import subprocess

    from pstyle.demo.pipeline import serve_app_root

    root = serve_app_root()
    sys.exit(subprocess.call([sys.executable, "-m", "pstyle.bench.serve_http", *args], cwd=root))


@bench.command("train")
@out_option
@click.option(
    "--layouts",
    default="1x1,1x2,2x1",
    show_default=True,
    help="WORKERSxCPUS per run: 1x1 one worker on one core, 1x2 one worker with 2 threads, 2x1 two workers",
)
@click.option("--steps", default=60, show_default=True, help="timed steps per run (after --warmup)")
@click.option("--warmup", default=5, show_default=True)
@click.option("--size", default=64, show_default=True)
@click.option("--batch", default=8, show_default=True, help="global batch, split across workers")
@click.option("--ray-address", default="local", show_default=True)
def bench_train(
    out_dir: Path, layouts: str, steps: int, warmup: int, size: int, batch: int, ray_address: str
) -> None:
    """Base-training throughput (steps/s, images/s) on Ray Train for several worker layouts."""
    from pstyle.bench.train import bench_train_layouts, train_table

    parsed = []
    for item in layouts.split(","):
        workers, _, cpus = item.partition("x")
        try:
            parsed.append((int(workers), float(cpus or 1)))
        except ValueError:
            raise ValueError(f"--layouts expects WORKERSxCPUS items, got {item!r}") from None
    with tempfile.TemporaryDirectory(prefix="pstyle-bench-train-") as tmp:
        result = bench_train_layouts(
            Path(tmp),
            parsed,
            steps=steps,
            warmup=warmup,
            image_size=size,
            batch=batch,
            ray_address=ray_address,
        )
    show(result, train_table(result), out_dir)


@bench.command("tune")
@out_option
@click.option("--trials", default=24, show_default=True)
@click.option("--iterations", default=27, show_default=True, help="max iterations per trial (ASHA max_t)")
@click.option("--steps-per-iteration", default=20, show_default=True)
@click.option(
    "--grace-period",
    default=TuneConfig.grace_period,
    show_default=True,
    help="ASHA: iterations before a trial can stop",
)
@click.option(
    "--reduction-factor",
    default=TuneConfig.reduction_factor,
    show_default=True,
    help="ASHA: keep the best 1/rf at each rung",
)
@click.option("--image-size", default=32, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--ray-address", default="local", show_default=True)
def bench_tune(
    out_dir: Path,
    trials: int,
    iterations: int,
    steps_per_iteration: int,
    image_size: int,
    seed: int,
    grace_period: int,
    reduction_factor: int,
    ray_address: str,
) -> None:
    """ASHA vs no early stopping: trial-iterations to reach within 5 % of the best score; trials/hour."""
    from pstyle.bench.tune import bench_config, run_bench_tune, tune_table

    cfg = bench_config(
        trials, iterations, steps_per_iteration, image_size, seed, grace_period, reduction_factor
    )
    with tempfile.TemporaryDirectory(prefix="pstyle-bench-tune-") as store:
        result = run_bench_tune(cfg.with_overrides({"store": store}), ray_address=ray_address, log=click.echo)
    show(result, tune_table(result), out_dir)


@bench.command("adapters-train")
@out_option
@click.option("--size", default=128, show_default=True, help="image size of the base and the adapters")
@click.option("--n-users", "n_users", default=4, show_default=True, help="synthetic users per run")
@renamed_option("--users", "--n-users", "n_users", type=int)
@click.option("--steps", default=100, show_default=True, help="adapter steps per user (early stopping off)")
@click.option("--base-steps", default=20, show_default=True, help="steps of the (timing-only) base")
@click.option(
    "--runs",
    default="seq,grouped4,mixed4,ray1x2,ray2x1",
    show_default=True,
    help="seq: one user at a time; grouped<K>/mixed<K>: K users per batched forward (2 threads, no Ray); "
    "ray<W>x<C>: the Ray job with W workers of C CPUs",
)
@click.option("--ray-address", default="local", show_default=True)
@click.option("--scale", default=0, help="N: the Ray Data job over N users: 1 vs 2 actors, one killed")
def bench_adapters_train(
    out_dir: Path,
    size: int,
    n_users: int,
    steps: int,
    base_steps: int,
    runs: str,
    ray_address: str,
    scale: int,
) -> None:
    """Adapter fine-tuning cost: seconds per user, users/hour, batched vs one user at a time."""
    from pstyle.bench.adapter_jobs import (
        bench_adapter_scale,
        bench_adapter_training,
        scale_table,
        training_table,
    )

    if scale:  # the job's throughput (--runs does not apply): pstyle/bench/adapter_jobs.py
        result = bench_adapter_scale(scale, size, steps, base_steps, ray_address=ray_address, log=click.echo)
        return show(result, scale_table(result), out_dir)
    result = bench_adapter_training(
        size=size,
        n_users=n_users,
        steps=steps,
        base_steps=base_steps,
        runs=runs.split(","),
        ray_address=ray_address,
        log=click.echo,
    )
    show(result, training_table(result), out_dir)

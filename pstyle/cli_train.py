"""`pstyle train-base --ray` options and `pstyle bench train`: base training on Ray Train.

`ray_jobs/train_base.py` runs `pstyle train-base --ray` with the same flags.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from pstyle.config import PStyleConfig

ray_options = [
    click.option("--ray", "use_ray", is_flag=True, help="data-parallel training on Ray Train (TorchTrainer)"),
    click.option("--workers", default=2, show_default=True, help="with --ray: training workers"),
    click.option("--gpu", is_flag=True, help="with --ray: one GPU per worker (NCCL instead of gloo)"),
    click.option(
        "--cpus-per-worker",
        default=1.0,
        show_default=True,
        help="with --ray: CPUs (torch threads) per worker",
    ),
    click.option(
        "--store", default=None, help="with --ray: folder or s3://bucket/prefix [$PSTYLE_STORE or ~/.pstyle]"
    ),
    click.option(
        "--name", default="train-base", show_default=True, help="with --ray: run name; the same name resumes"
    ),
    click.option("--max-failures", default=2, show_default=True, help="with --ray: worker-group restarts"),
    click.option(
        "--model-name", default="base", show_default=True, help="with --ray: registry name to publish as"
    ),
    click.option(
        "--ray-address",
        default=None,
        help="with --ray: 'local' (a private Ray) or a cluster address [RAY_ADDRESS, a running one, or new]",
    ),
    # Workers' pids and rank 0's per-step log, for tests and debugging (see pstyle.train_ray.Trace).
    click.option("--trace-dir", default=None, hidden=True, type=click.Path(file_okay=False, path_type=Path)),
]


def with_ray_options(fn):
    for option in reversed(ray_options):
        fn = option(fn)
    return fn


def train_base_ray(config: PStyleConfig, data_dir: Path, out_dir: Path | None, **options) -> None:
    """`pstyle train-base --ray`: train on Ray Train, publish to the registry, copy to --out if given."""
    from pstyle.train_ray import run_base_training

    options.pop("use_ray")
    outcome = run_base_training(
        config,
        data_dir,
        store=options.pop("store"),
        name=options.pop("name"),
        workers=options.pop("workers"),
        use_gpu=options.pop("gpu"),
        out_dir=out_dir,
        log=click.echo,
        **options,
    )
    click.echo(f"run {outcome.run_path}, checkpoint {outcome.checkpoint_path}")
    if out_dir is not None:
        click.echo(f"checkpoint in {out_dir}")


@click.command("train")
@click.option(
    "--out", "out_dir", default=Path("runs/bench"), show_default=True, type=click.Path(path_type=Path)
)
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
    from pstyle.bench import write_result
    from pstyle.bench_train import bench_train_layouts, train_table

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
    table = train_table(result)
    click.echo(table)
    click.echo(f"wrote {write_result(result, table, out_dir)}")

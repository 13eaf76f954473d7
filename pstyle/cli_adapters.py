"""`pstyle personalize --ray` options and `pstyle bench adapters-train`: many users' adapters on Ray Train.

`ray_jobs/train_adapters.py` runs `pstyle personalize --ray` with the same flags.
"""

from __future__ import annotations

from pathlib import Path

import click

from pstyle.cli_registry import store_option

ray_personalize_options = [
    click.option("--ray", "use_ray", is_flag=True, help="fine-tune every user of --users on Ray Train"),
    click.option(
        "--users",
        "users_ref",
        default=None,
        help="with --ray: a user manifest (store key or local JSON/YAML file) or a folder <dir>/<user>/*.png",
    ),
    click.option("--workers", default=1, show_default=True, help="with --ray: Ray Train workers"),
    click.option(
        "--cpus-per-worker", default=1.0, show_default=True, help="with --ray: CPUs (threads) per worker"
    ),
    click.option(
        "--group-size",
        default=2,
        show_default=True,
        help="with --ray: users trained together in one batched forward per worker",
    ),
    click.option(
        "--forward",
        type=click.Choice(["grouped", "mixed"]),
        default="grouped",
        show_default=True,
        help="with --ray, group size > 1: one pass per user (grouped) or per-sample adapters (mixed)",
    ),
    store_option,  # the registry's: --store -> store_uri
    click.option(
        "--name", default=None, help="with --ray: job name [adapters-<time>]; the same name resumes"
    ),
    click.option("--max-failures", default=1, show_default=True, help="with --ray: worker-group restarts"),
    click.option(
        "--summary",
        "summary_path",
        default=None,
        type=click.Path(dir_okay=False, path_type=Path),
        help="with --ray: also write the job summary JSON here",
    ),  # fmt: skip
    click.option(
        "--ray-address",
        default=None,
        help="with --ray: 'local' (a private Ray) or a cluster address [RAY_ADDRESS, a running one, or new]",
    ),
]


def with_ray_personalize_options(fn):
    for option in reversed(ray_personalize_options):
        fn = option(fn)
    return fn


def personalize_ray(base: str, steps: int | None, **options) -> None:
    """`pstyle personalize --ray --users FILE --base NAME[@ref]`: exits 1 if any user failed to train
    (skipped users, whose data is bad, are reported but do not fail the job)."""
    from pstyle.adapter_jobs import run_adapter_job
    from pstyle.personalize import PersonalizeConfig

    options.pop("use_ray")
    options["store"] = options.pop("store_uri")
    users_ref = options.pop("users_ref")
    if not users_ref:
        raise click.UsageError("--ray needs --users (a manifest or a folder of users)")
    cfg = PersonalizeConfig() if steps is None else PersonalizeConfig(steps=steps)
    summary = run_adapter_job(users_ref, base, personalize=cfg, log=click.echo, **options)
    if summary["failed"]:
        raise click.ClickException(f"{len(summary['failed'])} users failed: {', '.join(summary['failed'])}")


@click.command("adapters-train")
@click.option(
    "--out", "out_dir", default=Path("runs/bench"), show_default=True, type=click.Path(path_type=Path)
)
@click.option("--size", default=128, show_default=True, help="image size of the base and the adapters")
@click.option("--users", "n_users", default=4, show_default=True, help="synthetic users per run")
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
def bench_adapters_train(
    out_dir: Path, size: int, n_users: int, steps: int, base_steps: int, runs: str, ray_address: str
) -> None:
    """Adapter fine-tuning cost: seconds per user, users/hour, batched vs one user at a time."""
    from pstyle.bench import write_result
    from pstyle.bench_adapter_jobs import bench_adapter_training, training_table

    result = bench_adapter_training(
        size=size,
        n_users=n_users,
        steps=steps,
        base_steps=base_steps,
        runs=runs.split(","),
        ray_address=ray_address,
        log=click.echo,
    )
    table = training_table(result)
    click.echo(table)
    click.echo(f"wrote {write_result(result, table, out_dir)}")

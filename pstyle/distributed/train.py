"""Data-parallel base training on Ray Train: `pstyle train-base --ray` and `ray_jobs/train_base.py`.

Ray is imported inside functions only, so the core stays importable without it.

Every worker runs `train_loop_per_worker`: the same `BaseTrainer` as one-process training, built
from the same seed (identical initial weights, also broadcast from rank 0), on its own data and
noise stream, with gradients averaged across workers between backward and each optimizer step.
The global batch is `train.batch_size`, split evenly across workers, so a run with N workers
optimizes the same objective as one process with the same config; the process group is the one
`TorchTrainer` sets up (gloo on CPU, NCCL on GPU).

Why not `DistributedDataParallel` wrappers: the GAN objective runs each network several times per
phase, some of them frozen (D inside the G phase, the encoder on its own output), and R1 takes a
double backward through D. DDP's reducer expects one forward per backward that uses every
parameter; making it cope needs `no_sync` juggling per call. Like StyleGAN3's training loop, we
instead all-reduce each optimizer's gradients as one flat tensor: the same averaging DDP does,
without its bucketed overlap of communication and backward (negligible for models this size).

Checkpoints are reported through Ray Train into the store (`<store>/ray/train/<name>/`): rank 0
writes the pstyle checkpoint (`BaseTrainer.save`), every rank adds its RNG streams, and Ray merges
them into one directory. Resuming (after a worker failure, `max_failures`, or when the run is
submitted again with the same name and store) restores weights, optimizers, step and every
rank's streams, so a resumed run ends bit-identical to an uninterrupted one with the same number
of workers (on CPU; CUDA kernels are not deterministic by default). Resuming with another number
of workers is allowed (the batch is re-split, ranks without saved streams get fresh ones) but is
not covered by the tests.
The final checkpoint is published to the registry as a base-model version aliased `candidate`.

Input is either a dataset folder that every worker loads whole (`--data`: small sets; it must be
readable at the same path on every node, e.g. NFS/EFS) or streamed by Ray Data from image folders,
s3:// prefixes and procedural sources, each worker reading only its shard (`train_input.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pstyle.config import PStyleConfig, TrainJob
from pstyle.distributed.runtime import ensure_ray
from pstyle.store.registry import CANDIDATE_ALIAS
from pstyle.training.checkpoint import read_meta
from pstyle.training.trainer import BaseTrainer, BatchSource, training_data

STORAGE_PREFIX = "ray/train"  # store prefix of Ray Train's runs (checkpoints, run state)
RUN_STATE = "run_state.json"  # in each checkpoint: step, starts, world size
RANK_STREAMS = "rank-{rank}.streams.safetensors"  # in each checkpoint: one rank's RNG streams
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of a run's checkpoints


# ------------------------------------------------------------------------------------ collectives


def all_reduce_gradients(params: Iterable[torch.nn.Parameter], world_size: int) -> None:
    """Average the gradients of `params` over all workers: one flat all-reduce (StyleGAN3's way).

    Every rank runs the same control flow, so the same parameters have gradients everywhere."""
    grads = [p.grad for p in params if p.grad is not None]
    if world_size == 1 or not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world_size
    for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(part.view_as(g))


def broadcast_from_rank0(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite `tensors` with rank 0's values, one flat broadcast per dtype."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.detach().flatten() for t in group])
        torch.distributed.broadcast(flat, src=0)
        with torch.no_grad():
            for t, part in zip(group, flat.split([t.numel() for t in group]), strict=True):
                t.copy_(part.view_as(t))


def optimizer_params(opt: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in opt.param_groups for p in group["params"]]


def state_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer: equal digests mean bit-identical replicas."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------- streams


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank `rank`'s data and noise streams. Rank 0 keeps the one-process streams, so one
    worker trains exactly like `pstyle train-base`."""
    return seed + 1_000_003 * rank


def seed_rank_streams(data: BatchSource, seed: int, rank: int) -> None:
    if rank:
        torch.manual_seed(rank_seed(seed, rank))
        if data.generator is not None:
            data.generator.manual_seed(rank_seed(seed, rank))


def save_rank_streams(directory: Path, rank: int, data: BatchSource) -> None:
    streams = {"torch_rng": torch.get_rng_state()}
    if data.generator is not None:
        streams["data_rng"] = data.generator.get_state()
    save_file(streams, str(directory / RANK_STREAMS.format(rank=rank)))


def restore_rank_streams(directory: Path, rank: int, data: BatchSource, seed: int, step: int) -> None:
    """This rank's saved streams; a rank the checkpoint has none for (the run was resumed with more
    workers) starts fresh ones derived from the step, so it does not repeat another rank's data."""
    path = directory / RANK_STREAMS.format(rank=rank)
    if path.is_file():
        streams = load_file(str(path))
        torch.set_rng_state(streams["torch_rng"])
        if data.generator is not None and "data_rng" in streams:
            data.generator.set_state(streams["data_rng"])
    else:
        seed_rank_streams(data, seed + step, rank)


# ----------------------------------------------------------------------------------------- worker


class Trace:
    """Optional per-attempt record for tests, debugging and `pstyle bench train` (`trace_dir`): each
    worker writes its pid to `rank<r>.pid`; rank 0 appends one JSON line per attempt start and per
    step (wall time, process CPU time) to `steps.jsonl`, which shows where a resumed attempt picked
    up; with streamed input every rank appends each finished epoch's row keys to
    `rank<r>.epochs.jsonl`; at the end every rank writes `rank<r>.final.json` with the digest of its
    replica."""

    def __init__(self, directory: str | None, rank: int) -> None:
        self.dir = Path(directory) if directory else None
        self.rank = rank
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / f"rank{rank}.pid").write_text(str(os.getpid()))

    def event(self, **record: Any) -> None:
        if self.dir and self.rank == 0:
            with open(self.dir / "steps.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def epoch(self, dataset: str, epoch: int, keys: Any) -> None:
        if self.dir:
            record = {"dataset": dataset, "epoch": epoch, "keys": [int(k) for k in keys]}
            with open(self.dir / f"rank{self.rank}.epochs.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def final(self, **record: Any) -> None:
        if self.dir:
            (self.dir / f"rank{self.rank}.final.json").write_text(json.dumps(record))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker. `loop_config`: config (PStyleConfig dict), data (a folder, or None for
    the streamed shards), has_masks (streamed input has scenes), threads, trace_dir (optional)."""
    import ray.train
    import ray.train.torch

    config = PStyleConfig.from_dict(loop_config["config"])
    t = config.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if t.batch_size % world:
        raise ValueError(f"train.batch_size {t.batch_size} does not split evenly across {world} workers")
    torch.set_num_threads(int(loop_config.get("threads", 1)))
    device = ray.train.torch.get_device()

    trainer = BaseTrainer(config, device)  # same seed everywhere: same initial weights
    trace = Trace(loop_config.get("trace_dir"), rank)
    data: BatchSource
    if loop_config["data"]:
        data = training_data(config, Path(loop_config["data"]))  # same held-out split
    else:
        from pstyle.distributed.train_input import StreamedData

        shards = (ray.train.get_dataset_shard(name) for name in ("content", "styles"))
        data = StreamedData(*shards, has_masks=loop_config["has_masks"], on_epoch=trace.epoch)
    initial_digest = state_digest(trainer.model)
    if world > 1:
        trainer.sync_gradients = lambda opt: all_reduce_gradients(optimizer_params(opt), world)
        broadcast_from_rank0(trainer.model.state_dict().values())  # as DDP does when it wraps a model
    seed_rank_streams(data, t.seed, rank)
    starts = 1
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.restore(Path(d), data)
            restore_rank_streams(Path(d), rank, data, t.seed, trainer.step_count)
            starts = json.loads((Path(d) / RUN_STATE).read_text())["starts"] + 1
    resumed_from = trainer.step_count
    trace.event(event="start", step=resumed_from, starts=starts, world=world, pid=os.getpid())

    per_worker = t.batch_size // world
    started = time.perf_counter()
    while trainer.step_count < t.steps:
        logs = trainer.step(data.sample(per_worker, t.style_images, trainer.device))
        trace.event(event="step", step=trainer.step_count, time=time.time(), cpu=time.process_time())
        if trainer.step_count % t.checkpoint_every == 0 or trainer.step_count == t.steps:
            metrics = {
                **mean_over_workers(logs, world, trainer.device),
                "step": trainer.step_count,
                "resumed_from": resumed_from,
                "starts": starts,
                "workers": world,
                "train_seconds": time.perf_counter() - started,
            }
            report_checkpoint(trainer, data, rank, world, metrics)
    if resumed_from >= t.steps:
        # Submitted again after it had finished: nothing to train, the latest checkpoint stands.
        ray.train.report({"step": trainer.step_count, "resumed_from": resumed_from, "starts": starts})
    trace.final(
        rank=rank, step=trainer.step_count, digest=state_digest(trainer.model), initial=initial_digest
    )


def mean_over_workers(logs: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    """The last step's losses averaged over workers (each saw a different shard of the batch)."""
    if world == 1 or not logs:
        return dict(logs)
    keys = sorted(logs)
    values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(values)
    return {k: v / world for k, v in zip(keys, values.tolist(), strict=True)}


def report_checkpoint(
    trainer: BaseTrainer, data: BatchSource, rank: int, world: int, metrics: dict[str, Any]
) -> None:
    """Report metrics and a checkpoint: rank 0 writes the model, optimizers and run state, every rank
    its RNG streams; Ray Train merges the workers' files into one checkpoint directory."""
    import ray.train

    if world > 1:
        # BatchNorm running statistics are each worker's own between checkpoints (they never feed
        # back into training); take rank 0's so every replica holds the checkpointed model.
        broadcast_from_rank0(trainer.model.buffers())
    with tempfile.TemporaryDirectory(prefix="pstyle-train-") as tmp:
        directory = Path(tmp)
        if rank == 0:
            trainer.save(directory, data)
            state = {"step": trainer.step_count, "starts": metrics["starts"], "world": world}
            (directory / RUN_STATE).write_text(json.dumps(state))
        save_rank_streams(directory, rank, data)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


# ----------------------------------------------------------------------------------------- driver


@dataclass
class TrainOutcome:
    """What `run_base_training` did: the registry version and where Ray Train keeps the run."""

    version: Any  # pstyle.store.registry.Version
    step: int
    resumed: bool  # the store held this run already (resubmission)
    run_path: str  # Ray Train's run directory in the store
    checkpoint_path: str
    metrics: dict[str, Any]
    result: Any  # ray.train.Result


def run_base_training(
    config: PStyleConfig, job: TrainJob, log: Callable[[str], None] = print
) -> TrainOutcome:
    """Train (or resume) base run `job.name` on `job.workers` Ray Train workers; publish the result.

    The run lives in `<store>/ray/train/<name>`; submitting the same name and store again resumes
    from its latest checkpoint. The final checkpoint is published as a version of base model
    `job.model_name` with alias `candidate` (and copied to `job.out` when given).
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pstyle.distributed.train_input import image_folders, training_datasets
    from pstyle.store import open_store
    from pstyle.store.registry import Registry

    name, workers, model_name = job.name, job.workers, job.model_name
    if config.train.batch_size % workers:
        raise ValueError(
            f"train.batch_size {config.train.batch_size} does not split evenly across {workers} workers"
        )
    data_dir, folders = None, {}
    if not job.streamed:
        if not job.data:
            raise ValueError(
                "a training job needs --data (a folder every worker loads) or streamed input "
                "(--content/--scenes and --styles/--style-users)"
            )
        data_dir = Path(job.data).resolve()  # workers run in their own working directories
        if not data_dir.is_dir():
            raise FileNotFoundError(f"{data_dir}: no such data folder")
    else:
        folders = image_folders(job)
    ensure_ray(job.ray_address)
    datasets = None
    if job.streamed:
        datasets = training_datasets(job, config, folders)
        warn_if_no_cpu_left_for_data(job, log)
    store_obj = open_store(job.store)
    storage_path, filesystem = store_obj.arrow_storage(STORAGE_PREFIX)
    run_path = f"{storage_path.rstrip('/')}/{name}"
    resumed = _exists(filesystem, f"{run_path}/{SNAPSHOT}")
    log(f"{'resuming' if resumed else 'starting'} run {name} in {run_path} ({workers} workers)")

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.to_dict(),
            "data": data_dir and str(data_dir),
            "has_masks": job.scenes > 0,
            "threads": max(1, int(job.cpus_per_worker)),
            "trace_dir": job.trace_dir,
        },
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=job.gpu, resources_per_worker={"CPU": job.cpus_per_worker}
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split="all"),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=job.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {name} finished without a checkpoint")
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float | str)}
    with result.checkpoint.as_directory() as d:
        step = read_meta(Path(d))["step"]
        version, new = publish_once(Registry(store_obj), model_name, Path(d), {**metrics, "ray_run": name})
        if job.out is not None:
            _copy_checkpoint(Path(d), Path(job.out))
    what = "published" if new else "already published as"
    log(f"step {step}: {what} base {model_name} v{version.number} (alias {CANDIDATE_ALIAS})")
    return TrainOutcome(version, step, resumed, run_path, result.checkpoint.path, metrics, result)


def warn_if_no_cpu_left_for_data(job: TrainJob, log: Callable[[str], None]) -> None:
    """Ray Data decodes on CPUs that the training workers leave free; with none left (2 workers of
    1 CPU on a 2-CPU machine) the input never arrives. An autoscaling cluster may still add nodes,
    so this warns rather than refuses."""
    import ray

    free = ray.cluster_resources().get("CPU", 0) - job.workers * job.cpus_per_worker
    if free < 1:
        log(
            f"warning: the workers take all but {max(free, 0):g} of the cluster's CPUs; streamed input "
            "needs at least one free CPU to decode (lower --cpus-per-worker or --workers)"
        )


def publish_once(
    registry: Any, model_name: str, checkpoint_dir: Path, metrics: dict[str, Any]
) -> tuple[Any, bool]:
    """Publish the checkpoint aliased `candidate` -> (version, True), unless the newest version
    already holds this step's weights (a finished run submitted again) -> (that version, False)."""
    meta = read_meta(checkpoint_dir)
    numbers = registry.versions("base", model_name)
    if numbers:
        latest = registry.get("base", model_name, numbers[-1])
        if (latest.manifest.get("fingerprint"), latest.manifest.get("step")) == (
            meta["fingerprint"],
            meta["step"],
        ):
            return latest, False
    return registry.publish_base(model_name, checkpoint_dir, metrics=metrics, aliases=[CANDIDATE_ALIAS]), True


def _copy_checkpoint(src: Path, dest: Path) -> None:
    """The pstyle checkpoint files (not the ranks' streams) into `dest`, for local use."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir(), key=lambda p: p.name == "meta.json"):  # meta.json last
        if path.is_file() and not path.name.startswith("rank-") and path.name != RUN_STATE:
            shutil.copy2(path, dest / path.name)


def _exists(filesystem: Any, path: str) -> bool:
    from pyarrow import fs

    filesystem = filesystem or fs.LocalFileSystem()
    return filesystem.get_file_info(path).type != fs.FileType.NotFound

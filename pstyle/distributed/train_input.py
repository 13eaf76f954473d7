"""Streamed base-training input on Ray Data, for datasets no worker should hold.

Two datasets feed every step: content rows (photos from a folder or an s3:// prefix, procedural
scenes) and style rows (style images, each a set of its crops, and procedural style users). Ray Data
reads the files, decodes and augments them in `map_batches` tasks on the cluster's CPUs, and Ray
Train hands each worker its own shard (`get_dataset_shard`), streamed: a worker holds a shuffle
buffer of rows, never the set.

Files are read as bytes and decoded by pstyle's `open_image` rather than `ray.data.read_images`: the
same decoder as serving, so phone photos are turned upright by their EXIF orientation, JPEGs decode
at reduced scale when the crop is small, and an unreadable file is skipped with a warning instead of
failing the run.

Shards are finite; a worker starts its next epoch when one runs out, and an epoch's last partial
batch is completed from the next, so no row is dropped. Resuming restores weights, optimizers and
noise streams, then starts the input afresh: a streamed run is not bit-reproducible (Ray Data's
order and the crops vary), unlike the folder path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pstyle.config import PStyleConfig, TrainJob
from pstyle.images import IMAGE_SUFFIXES
from pstyle.training import stream_rows
from pstyle.training.objective import Batch

SHUFFLE_BUFFER = 64  # rows each worker mixes across blocks and sources before cutting a batch
ROWS_PER_BLOCK = 16  # procedural sources: blocks small enough to spread over many CPUs
FILES_PER_BATCH = 16  # files per decoding call: their raw bytes are in memory together


def image_files(uri: str) -> tuple[str, Any]:
    """`(path, pyarrow filesystem)` of an image folder: a local path (None) or s3://bucket/prefix on
    the store's endpoint, with the credentials each reading node resolves itself."""
    if uri.startswith("s3://"):
        from pstyle.store.s3 import S3Store

        store = S3Store.from_uri(uri.rstrip("/"))
        return "/".join(part for part in (store.bucket, store.prefix) if part), store.arrow_filesystem()
    folder = Path(uri).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"{uri}: no such image folder")
    return str(folder), None


def image_folders(job: TrainJob) -> dict[str, tuple[str, Any]]:
    """uri -> `image_files(uri)` for the job's content and style folders; resolved before Ray starts,
    so a missing local folder fails first."""
    return {uri: image_files(uri) for uri in (job.content, job.styles) if uri}


def _read_files(
    folder: tuple[str, Any], rows: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
) -> Any:
    """The image files of `folder` (`image_files`), turned into training rows `FILES_PER_BATCH` files
    at a time."""
    import ray.data

    path, filesystem = folder
    files = ray.data.read_binary_files(
        path,
        filesystem=filesystem,
        include_paths=True,
        file_extensions=[suffix.lstrip(".") for suffix in IMAGE_SUFFIXES],
    )
    return files.map_batches(rows, batch_size=FILES_PER_BATCH, batch_format="numpy")


def _procedural(count: int) -> Any:
    import ray.data

    return ray.data.range(count, override_num_blocks=max(1, -(-count // ROWS_PER_BLOCK)))


def _union(parts: list[Any]) -> Any:
    """The sources as one dataset, blocks in a new random order every epoch (rows are mixed further
    by each worker's shuffle buffer)."""
    return (parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]).randomize_block_order()


def training_datasets(
    job: TrainJob, config: PStyleConfig, folders: dict[str, tuple[str, Any]]
) -> dict[str, Any]:
    """{"content": ..., "styles": ...}: the Ray Data datasets a streamed job trains on (`folders`:
    `image_folders(job)`)."""
    size, set_size, seed = config.train.image_size, config.train.style_images, config.train.seed
    content, styles = [], []
    if job.content:
        rows = functools.partial(stream_rows.photo_content_rows, size=size)
        content.append(_read_files(folders[job.content], rows))
    if job.scenes:
        rows = functools.partial(stream_rows.scene_content_rows, size=size, seed=seed)
        content.append(_procedural(job.scenes).map_batches(rows, batch_format="numpy"))
    if job.styles:
        rows = functools.partial(stream_rows.photo_style_rows, size=size, set_size=set_size)
        styles.append(_read_files(folders[job.styles], rows))
    if job.style_users:
        rows = functools.partial(stream_rows.user_style_rows, size=size, set_size=set_size, seed=seed)
        styles.append(_procedural(job.style_users).map_batches(rows, batch_format="numpy"))
    return {"content": _union(content), "styles": _union(styles)}


def endless_batches(
    shard: Any, rows: int, on_epoch: Callable[[int, np.ndarray], None]
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of exactly `rows` rows from a Ray Data shard, one epoch after another; `on_epoch`
    gets each finished epoch's number and row keys."""
    pending: dict[str, np.ndarray] | None = None
    epoch = 0
    while True:
        keys = []
        for part in shard.iter_batches(
            batch_size=rows, batch_format="numpy", local_shuffle_buffer_size=SHUFFLE_BUFFER
        ):
            keys.append(part["key"])
            pending = (
                part if pending is None else {k: np.concatenate([pending[k], v]) for k, v in part.items()}
            )
            while len(pending["key"]) >= rows:
                yield {k: v[:rows] for k, v in pending.items()}
                pending = {k: v[rows:] for k, v in pending.items()}
        if not sum(len(k) for k in keys):
            raise RuntimeError(
                "this worker's share of the streamed input is empty: give more images or fewer workers"
            )
        on_epoch(epoch, np.concatenate(keys))
        epoch += 1


class StreamedData:
    """A Ray Train worker's streamed input: `sample()` pairs its next content rows with its next
    style rows (`set_size` was fixed when the rows were made). It has no RNG stream to checkpoint
    (`generator` is None): the Ray Data tasks draw the crops."""

    generator: torch.Generator | None = None

    def __init__(
        self, content: Any, styles: Any, has_masks: bool, on_epoch: Callable[[str, int, np.ndarray], None]
    ) -> None:
        self.shards = {"content": content, "styles": styles}
        self.has_masks = has_masks
        self.on_epoch = on_epoch
        self.streams: dict[str, Iterator[dict[str, np.ndarray]]] = {}

    def sample(self, batch_size: int, set_size: int, device: torch.device) -> Batch:
        if not self.streams:  # the batch size is known only now
            self.streams = {
                name: endless_batches(shard, batch_size, functools.partial(self.on_epoch, name))
                for name, shard in self.shards.items()
            }
        content, styles = next(self.streams["content"]), next(self.streams["styles"])
        return stream_rows.training_batch(content, styles, self.has_masks, device)

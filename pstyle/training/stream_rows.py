"""Training rows for streamed base training, made one batch at a time: decoded and cropped photos,
procedural scenes and style sets.

Ray Data's `map_batches` runs these on a cluster's CPUs (pstyle.distributed.train_input), so no
training worker decodes or holds the dataset. They know nothing of Ray: a batch is a dict of numpy
arrays in and out. Rows travel as uint8, a quarter of float32's bytes through Ray's object store,
and become float tensors only in `training_batch`.

Crops and flips of files draw fresh randomness in every call, so each epoch sees new crops, as
torchvision transforms do. Procedural rows are seeded by their index, so scene or user `i` is the
same image in every epoch and on every node.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from pstyle.data.augment import augment
from pstyle.data.synth import FAMILIES, make_scene, user_style
from pstyle.images import ImageError, open_image, to_tensor
from pstyle.training.objective import Batch

log = logging.getLogger(__name__)

# Generator streams of procedural rows, apart from the synth folder's (0: content, 2: style images),
# so streamed training never renders an image that a synth folder holds out for evaluation.
SCENE_STREAM, USER_STREAM = 4, 3
DRAFT_FACTOR = 4  # JPEGs decode at reduced scale down to 4x the crop size: crops keep full detail
SCENE_KEY_BASE = 1 << 40  # scene keys sit above any crc32 of a path


def _fresh_generator() -> torch.Generator:
    gen = torch.Generator()
    gen.seed()  # fresh entropy: another epoch, another crop
    return gen


def _uint8(images: list[torch.Tensor], shape: tuple[int, ...]) -> np.ndarray:
    """float images in [0, 1] -> one uint8 array; an empty batch keeps its shape (0, *shape)."""
    if not images:
        return np.zeros((0, *shape), np.uint8)
    return (torch.stack(images).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def path_keys(paths: Iterable[str]) -> np.ndarray:
    """A stable int64 key per file path (crc32): tells rows apart without carrying strings."""
    return np.array([zlib.crc32(str(p).encode()) for p in paths], np.int64)


def _readable(batch: dict[str, np.ndarray], size: int) -> Iterator[tuple[torch.Tensor, str]]:
    """The batch's readable images as (3,H,W) floats with their paths, decoded one at a time so a
    caller that crops each before the next holds one full-size image, not the batch; an unreadable
    file is logged and skipped, so one corrupt image among millions does not stop a run."""
    for data, path in zip(batch["bytes"], batch["path"], strict=True):
        try:
            image = open_image(bytes(data), name=str(path), draft_side=DRAFT_FACTOR * size)
        except ImageError as e:
            log.warning("skipping %s", e)
            continue
        yield to_tensor(image), str(path)


def photo_content_rows(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Files (`bytes`, `path`) -> content rows: one augmented crop each, no subject mask."""
    gen = _fresh_generator()
    crops, paths = [], []
    for image, path in _readable(batch, size):
        crops.append(augment(image, size, gen))
        paths.append(path)
    n = len(crops)
    return {
        "image": _uint8(crops, (3, size, size)),
        "mask": np.zeros((n, 1, size, size), np.uint8),
        "mask_valid": np.zeros(n, bool),
        "key": path_keys(paths),
    }


def scene_content_rows(batch: dict[str, np.ndarray], size: int, seed: int) -> dict[str, np.ndarray]:
    """Indices (`id`) -> procedural scenes with their subject masks."""
    images, masks = [], []
    for i in batch["id"]:
        image, mask = make_scene(np.random.default_rng([seed, SCENE_STREAM, int(i)]), size)
        images.append(torch.from_numpy(image).permute(2, 0, 1))
        masks.append(torch.from_numpy(mask)[None])
    n = len(images)
    return {
        "image": _uint8(images, (3, size, size)),
        "mask": _uint8(masks, (1, size, size)),
        "mask_valid": np.ones(n, bool),
        "key": SCENE_KEY_BASE + np.asarray(batch["id"], np.int64),
    }


def photo_style_rows(batch: dict[str, np.ndarray], size: int, set_size: int) -> dict[str, np.ndarray]:
    """Files -> style rows: `set_size + 1` crops of one image (one consistent look); the last is
    the real image D sees."""
    gen = _fresh_generator()
    sets, paths = [], []
    for image, path in _readable(batch, size):
        sets.append(torch.stack([augment(image, size, gen, jitter=False) for _ in range(set_size + 1)]))
        paths.append(path)
    return {"styles": _uint8(sets, (set_size + 1, 3, size, size)), "key": path_keys(paths)}


def user_style_rows(
    batch: dict[str, np.ndarray], size: int, set_size: int, seed: int
) -> dict[str, np.ndarray]:
    """Indices (`id`) -> style rows of procedural users: `set_size + 1` images of user `id`'s style."""
    sets = []
    for u in batch["id"]:
        family, params = user_style(int(u), seed)
        render = FAMILIES[family].render
        images = [
            render(params, np.random.default_rng([seed, USER_STREAM, int(u), k]), size)
            for k in range(set_size + 1)
        ]
        sets.append(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))
    return {"styles": _uint8(sets, (set_size + 1, 3, size, size)), "key": np.asarray(batch["id"], np.int64)}


def training_batch(
    content: dict[str, np.ndarray], styles: dict[str, np.ndarray], has_masks: bool, device: torch.device
) -> Batch:
    """Content rows and style rows (equally many) -> the float Batch that `BaseTrainer.step` takes.

    `has_masks` is a property of the job (it streams scenes), not of this batch, so every worker
    runs the segmenter phase on every step even when its batch happens to hold photos only."""

    def floats(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(device).float().div_(255)

    sets = floats(styles["styles"])
    return Batch(
        floats(content["image"]),
        sets[:, :-1],
        sets[:, -1],
        floats(content["mask"]) if has_masks else None,
        torch.from_numpy(content["mask_valid"]).to(device) if has_masks else None,
    )

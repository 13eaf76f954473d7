"""Streamed training input without Ray: the row transforms Ray Data runs, and how a worker cuts its
shard into batches across epochs (a stand-in shard replays fixed blocks)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from pstyle.data.photos import photo_paths
from pstyle.data.synth import make_scene
from pstyle.distributed.train_input import StreamedData, endless_batches
from pstyle.training import stream_rows

SIZE = 32


def file_batch() -> dict[str, np.ndarray]:
    """Two real JPEGs and one corrupt file, as `read_binary_files(include_paths=True)` gives them."""
    paths = [p for p in photo_paths().values() if p.suffix == ".jpg"][:2]
    data = [p.read_bytes() for p in paths] + [b"\xff\xd8 truncated"]
    names = [str(p) for p in paths] + ["uploads/broken.jpg"]
    return {"bytes": np.array(data, dtype=object), "path": np.array(names, dtype=object)}


def test_photo_rows_crop_each_readable_file_and_skip_a_corrupt_one():
    batch = file_batch()
    content = stream_rows.photo_content_rows(batch, SIZE)
    assert content["image"].shape == (2, 3, SIZE, SIZE) and content["image"].dtype == np.uint8
    assert content["image"].std() > 10  # real pixels, not a blank canvas
    assert not content["mask_valid"].any() and not content["mask"].any()  # photos carry no subject mask
    np.testing.assert_array_equal(content["key"], stream_rows.path_keys(batch["path"][:2]))
    styles = stream_rows.photo_style_rows(batch, SIZE, set_size=3)
    assert styles["styles"].shape == (2, 4, 3, SIZE, SIZE)
    assert not np.array_equal(styles["styles"][0, 0], styles["styles"][0, 1])  # different crops


def test_a_batch_of_only_corrupt_files_gives_no_rows():
    batch = {"bytes": np.array([b"nope"], dtype=object), "path": np.array(["x.png"], dtype=object)}
    rows = stream_rows.photo_content_rows(batch, SIZE)
    assert {k: v.shape[0] for k, v in rows.items()} == {"image": 0, "mask": 0, "mask_valid": 0, "key": 0}


def test_procedural_rows_are_seeded_by_index_and_apart_from_the_synth_folder():
    ids = {"id": np.array([3, 4])}
    scenes = stream_rows.scene_content_rows(ids, SIZE, seed=0)
    np.testing.assert_array_equal(scenes["image"], stream_rows.scene_content_rows(ids, SIZE, seed=0)["image"])
    assert scenes["mask_valid"].all() and set(np.unique(scenes["mask"])) == {0, 255}
    folder_scene, _ = make_scene(np.random.default_rng([0, 0, 3]), SIZE)  # the synth folder's scene 3
    assert not np.allclose(scenes["image"][0] / 255, folder_scene.transpose(2, 0, 1), atol=0.02)
    users = stream_rows.user_style_rows(ids, SIZE, set_size=2, seed=0)
    assert users["styles"].shape == (2, 3, 3, SIZE, SIZE)
    np.testing.assert_array_equal(
        users["styles"], stream_rows.user_style_rows(ids, SIZE, 2, seed=0)["styles"]
    )
    assert not np.array_equal(users["styles"][0, 0], users["styles"][0, 1])  # a set of distinct images


def test_training_batch_turns_rows_into_floats():
    content = stream_rows.scene_content_rows({"id": np.arange(2)}, SIZE, seed=0)
    styles = stream_rows.user_style_rows({"id": np.arange(2)}, SIZE, set_size=2, seed=0)
    batch = stream_rows.training_batch(content, styles, has_masks=True, device=torch.device("cpu"))
    assert batch.content.dtype == torch.float32 and batch.content.min() >= 0 and batch.content.max() <= 1
    assert batch.styles.shape == (2, 2, 3, SIZE, SIZE)
    torch.testing.assert_close(batch.real, torch.from_numpy(styles["styles"][:, 2]).float() / 255)
    assert set(batch.masks.unique().tolist()) == {0.0, 1.0} and batch.mask_valid.all()
    no_masks = stream_rows.training_batch(content, styles, has_masks=False, device=torch.device("cpu"))
    assert no_masks.masks is None and no_masks.mask_valid is None


class ReplayShard:
    """Stands in for a Ray Data shard: every epoch yields the same blocks of rows."""

    def __init__(self, block_rows: list[int]) -> None:
        self.blocks, start = [], 0
        for n in block_rows:
            self.blocks.append({"key": np.arange(start, start + n), "x": np.arange(start, start + n) * 10})
            start += n
        self.epochs = 0

    def iter_batches(self, **_: object) -> Iterator[dict[str, np.ndarray]]:
        self.epochs += 1
        yield from self.blocks


def test_endless_batches_cut_exact_batches_across_epochs():
    shard, epochs = ReplayShard([3, 3, 1]), []
    stream = endless_batches(
        shard, rows=4, on_epoch=lambda epoch, keys: epochs.append((epoch, keys.tolist()))
    )
    batches = [next(stream) for _ in range(5)]  # 20 rows: two full epochs of 7, and 6 of the third
    assert all(len(b["key"]) == len(b["x"]) == 4 for b in batches)
    keys = np.concatenate([b["key"] for b in batches]).tolist()
    assert keys == [*range(7), *range(7), *range(6)]  # nothing dropped at an epoch's end
    assert all((b["x"] == b["key"] * 10).all() for b in batches)  # columns stay aligned
    assert epochs == [(0, list(range(7))), (1, list(range(7)))] and shard.epochs == 3


def test_an_empty_shard_is_a_clear_error():
    with pytest.raises(RuntimeError, match="share of the streamed input is empty"):
        next(endless_batches(ReplayShard([]), rows=2, on_epoch=lambda *_: None))


def test_streamed_data_pairs_content_with_style_sets():
    def shard(rows: dict[str, np.ndarray]) -> ReplayShard:
        replay = ReplayShard([])
        replay.blocks = [rows]
        return replay

    content = shard(stream_rows.scene_content_rows({"id": np.arange(3)}, SIZE, seed=0))
    styles = shard(stream_rows.user_style_rows({"id": np.arange(2)}, SIZE, set_size=2, seed=0))
    seen: list[tuple[str, int]] = []
    data = StreamedData(
        content, styles, has_masks=True, on_epoch=lambda name, epoch, _: seen.append((name, epoch))
    )
    assert data.generator is None  # nothing for a checkpoint to save
    for _ in range(3):
        batch = data.sample(2, 2, torch.device("cpu"))
        assert batch.content.shape == (2, 3, SIZE, SIZE) and batch.styles.shape == (2, 2, 3, SIZE, SIZE)
    assert seen == [("content", 0), ("styles", 0), ("styles", 1)]

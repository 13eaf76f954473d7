"""Folder datasets: bad files are skipped by name, masks stay aligned, user splits are deterministic."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pstyle.data.folders import ContentFolder, StyleUsers, load_style_images
from pstyle.data.synth import synthesize
from pstyle.images import ImageError


def write_image(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def write_bad_files(folder: Path) -> list[str]:
    """One of each kind of bad file, all with image suffixes; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    png[len(png) // 2 : len(png) // 2 + 64] = bytes(64)  # corrupt the middle of the compressed data
    (folder / "corrupt.png").write_bytes(bytes(png))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not really a picture")
    return ["corrupt.png", "truncated.jpg", "empty.png", "notes.png"]


def test_synth_content_with_masks(tmp_path: Path) -> None:
    root = synthesize(tmp_path / "ds", n_content=4, n_users=0, size=64, seed=0)
    ds = ContentFolder(root / "content", size=32, with_masks=True)
    assert len(ds) == 4
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (1, 32, 32)
        assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert "mask" not in ContentFolder(root / "content", size=32)[0]


def test_masks_paired_by_stem_and_aligned(tmp_path: Path) -> None:
    """Non-square images, a missing mask: geometry must match pixel for pixel and pairing by name."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for stem, box in [("a", (10, 10, 40, 50)), ("b", (50, 5, 90, 30)), ("c", (0, 0, 30, 30))]:
        m = Image.new("L", (96, 60), 0)
        m.paste(255, box)
        Image.merge("RGB", [m, m, m]).save(tmp_path / "images" / f"{stem}.png")  # white subject on black
        if stem != "c":  # c has no mask
            m.save(tmp_path / "masks" / f"{stem}.jpg" if stem == "b" else tmp_path / "masks" / f"{stem}.png")
    with pytest.warns(UserWarning, match=r"skipping c\.png: no mask"):
        ds = ContentFolder(tmp_path, size=32, with_masks=True)
    assert [p.stem for p in ds.paths] == ["a", "b"]
    for i in range(len(ds)):
        agree = ((ds[i]["image"][0] > 0.5) == (ds[i]["mask"][0] > 0.5)).float().mean()
        assert agree > 0.98


def test_bad_files_are_skipped_by_name(tmp_path: Path) -> None:
    bad = write_bad_files(tmp_path)
    write_image(tmp_path / "good1.png", 1)
    write_image(tmp_path / "good2.jpg", 2)
    with pytest.warns(UserWarning) as record:
        ds = ContentFolder(tmp_path, size=32)
    assert len(ds) == 2 and [p.name for p in ds.paths] == ["good1.png", "good2.jpg"]
    messages = [str(w.message) for w in record]
    for name in bad:
        assert any(m.startswith(f"skipping {name}: ") for m in messages), name
    assert ds[1]["image"].shape == (3, 32, 32)


def test_all_bad_folder_raises(tmp_path: Path) -> None:
    write_bad_files(tmp_path / "junk")
    with pytest.warns(UserWarning), pytest.raises(ImageError, match="junk: no valid images"):
        ContentFolder(tmp_path / "junk", size=32)


@pytest.fixture
def users_root(tmp_path: Path) -> Path:
    for k in range(5):
        write_image(tmp_path / "alice" / f"{k}.png", 10 + k)
    for k in range(3):
        write_image(tmp_path / "bob" / f"{k}.png", 20 + k)
    write_bad_files(tmp_path / "bob")
    write_bad_files(tmp_path / "carol")
    return tmp_path


def test_style_users_excludes_bad_files_and_users(users_root: Path) -> None:
    with pytest.warns(UserWarning) as record:
        users = StyleUsers(users_root, size=32)
    assert users.user_ids == ["alice", "bob"]
    assert any("skipping user carol" in str(w.message) for w in record)
    assert users.images("alice").shape == (5, 3, 32, 32)
    assert users.images("bob").shape == (3, 3, 32, 32)
    for bad_id in ("carol", "../alice", "zed"):
        with pytest.raises(KeyError, match="unknown user id"):
            users.images(bad_id)


def test_style_users_split(users_root: Path) -> None:
    with pytest.warns(UserWarning):
        users = StyleUsers(users_root, size=32)
    train, held = users.split("alice", holdout=2, seed=0)
    assert train.shape[0] == 3 and held.shape[0] == 2
    again = users.split("alice", holdout=2, seed=0)
    assert torch.equal(train, again[0]) and torch.equal(held, again[1])
    everything = torch.cat([train, held])
    assert sorted(x.sum().item() for x in everything) == sorted(x.sum().item() for x in users.images("alice"))
    splits = {tuple(x.sum().item() for x in users.split("alice", 2, seed=s)[1]) for s in range(8)}
    assert len(splits) > 1  # the seed matters
    train, held = users.split("bob", holdout=10)
    assert train.shape[0] == 1 and held.shape[0] == 2  # at least one training image is kept
    assert users.split("bob", holdout=0)[1].shape[0] == 0


def test_load_style_images(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", 1)
    write_image(tmp_path / "b.png", 2, size=(100, 70))
    assert load_style_images([tmp_path / "a.png", tmp_path / "b.png"], 32).shape == (2, 3, 32, 32)
    write_bad_files(tmp_path)
    with pytest.raises(ImageError, match=r"^truncated\.jpg: truncated"):
        load_style_images([tmp_path / "a.png", tmp_path / "truncated.jpg", tmp_path / "empty.png"], 32)
    with pytest.raises(ValueError, match="no style images"):
        load_style_images([], 32)

"""Procedural dataset: deterministic, well-formed, and one consistent style per user."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pstyle.data.synth import FAMILIES, make_scene, synthesize

ARGS = {"n_content": 5, "n_users": 16, "images_per_user": 4, "size": 48, "seed": 3}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth") / "ds", **ARGS)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_manifest(data: Path) -> None:
    assert len(list((data / "content/images").glob("*.png"))) == 5
    assert sorted(p.name for p in (data / "content/masks").iterdir()) == [f"{i:05d}.png" for i in range(5)]
    m = json.loads((data / "manifest.json").read_text())
    assert (m["seed"], m["size"], m["n_content"]) == (3, 48, 5)
    assert m["families"] == list(FAMILIES) and len(FAMILIES) >= 8
    assert {u["family"] for u in m["users"].values()} == set(FAMILIES)  # 16 users cycle all 8 families
    assert sorted(p.name for p in (data / "styles").iterdir()) == sorted(m["users"])
    for user_id, user in m["users"].items():
        assert user_id.startswith(user["family"] + "-")
        styles = sorted((data / "styles" / user_id).iterdir())
        assert [p.name for p in styles] == ["000.png", "001.png", "002.png", "003.png"]
    with Image.open(data / "content/images/00000.png") as img:
        assert (img.mode, img.size) == ("RGB", (48, 48))
    with Image.open(data / "content/masks/00000.png") as img:
        assert img.mode == "L" and set(np.unique(np.asarray(img))) <= {0, 255}
    assert [p.name for p in data.parent.iterdir()] == ["ds"]  # no temp build folder left behind


def test_deterministic_byte_identical(data: Path, tmp_path: Path) -> None:
    again = files(synthesize(tmp_path / "again", **ARGS))
    assert again == files(data)
    other = files(synthesize(tmp_path / "other", **{**ARGS, "seed": 4}))
    assert other["content/images/00000.png"] != again["content/images/00000.png"]


def test_idempotent_and_refuses_to_mix(data: Path, tmp_path: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    assert synthesize(data, **ARGS) == data
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*")} == before
    with pytest.raises(FileExistsError, match="differs in: seed"):
        synthesize(data, **{**ARGS, "seed": 9})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a pstyle synth dataset"):
        synthesize(tmp_path / "busy", **ARGS)
    with pytest.raises(ValueError, match="size must be at least 32"):
        synthesize(tmp_path / "tiny", **{**ARGS, "size": 16})


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_renders(name: str) -> None:
    family = FAMILIES[name]
    params = family.sample_params(np.random.default_rng(0))
    json.dumps(params)  # params go into the manifest
    for size in (32, 80):
        img = family.render(params, np.random.default_rng(1), size)
        assert img.shape == (size, size, 3) and img.dtype == np.float32
        assert img.min() >= 0.0 and img.max() <= 1.0
        assert img.std() > 0.05  # a real pattern, not a flat fill


def test_scenes_and_masks() -> None:
    for i in range(12):
        img, mask = make_scene(np.random.default_rng(i), 64)
        assert img.shape == (64, 64, 3) and img.dtype == np.float32 and img.min() >= 0 and img.max() <= 1
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0.0, 1.0}
        assert 0.10 <= mask.mean() <= 0.45


def colour_hist(path: Path) -> np.ndarray:
    """Joint RGB histogram, 4 bins per channel: captures palette and colour proportions."""
    a = np.asarray(Image.open(path).convert("RGB")) // 64
    h = np.bincount((a[..., 0] * 16 + a[..., 1] * 4 + a[..., 2]).ravel(), minlength=64)
    return h / h.sum()


def test_same_user_images_are_closer_than_other_users(data: Path) -> None:
    users = sorted((data / "styles").iterdir())
    hists = {u.name: np.stack([colour_hist(p) for p in sorted(u.iterdir())]) for u in users}

    def mean_dist(a: str, b: str) -> float:
        d = np.abs(hists[a][:, None] - hists[b][None]).sum(-1)
        return float(d[~np.eye(len(d), dtype=bool)].mean() if a == b else d.mean())

    for u in hists:  # includes pairs of users drawn from the same family
        others = min(mean_dist(u, v) for v in hists if v != u)
        assert mean_dist(u, u) < others, u

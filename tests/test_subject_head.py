"""The subject head: its training data (cutouts on backgrounds), its training, and its shipped weights."""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pstyle.config import SubjectTrainConfig
from pstyle.data.cutouts import Compositor, load_backgrounds, load_cutouts
from pstyle.models import subject_head
from pstyle.models.subject_head import SubjectHead, SubjectHeadError
from pstyle.pinned import pin
from pstyle.training.subject_head import train_subject_head


def _blob(rng: np.random.Generator, size: int = 64, flat: bool = False, opaque: bool = False) -> Image.Image:
    """An RGBA ellipse of random colours (a "photographed" object) or of one colour (clip art)."""
    yy, xx = np.mgrid[:size, :size]
    a, b = rng.uniform(0.25, 0.45, 2) * size
    inside = ((xx - size / 2) / a) ** 2 + ((yy - size / 2) / b) ** 2 <= 1
    rgb = np.full((size, size, 3), 200, np.uint8) if flat else rng.integers(0, 256, (size, size, 3), np.uint8)
    alpha = np.full((size, size), 255, np.uint8) if opaque else (inside * 255).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def _gradient(rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A smooth two-colour background."""
    t = np.linspace(0, 1, size)[None, :, None]
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    return Image.fromarray(np.broadcast_to(c0 + (c1 - c0) * t, (size, size, 3)).astype(np.uint8))


def _cutout_folder(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        (folder / f"kind{i % 2}").mkdir(parents=True, exist_ok=True)
        _blob(rng).save(folder / f"kind{i % 2}" / f"object{i}.png")
    return folder


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def test_cutouts_are_detailed_partly_transparent_images_only(tmp_path):
    rng = np.random.default_rng(1)
    _blob(rng).save(tmp_path / "photo_object.png")
    _blob(rng, flat=True).save(tmp_path / "clip_art.png")
    _blob(rng, opaque=True).save(tmp_path / "no_transparency.png")
    _blob(rng).convert("RGB").save(tmp_path / "no_alpha.png")
    (cutout,) = load_cutouts(tmp_path)
    alpha = np.asarray(cutout.getchannel("A")) > 127
    assert alpha[0].any() and alpha[-1].any() and alpha[:, 0].any() and alpha[:, -1].any()  # cropped to it
    with pytest.raises(ValueError, match="no RGBA cutouts"):
        load_cutouts(_empty(tmp_path))


def test_backgrounds_take_each_wallpapers_largest_file_and_skip_those_with_a_subject(tmp_path):
    rng = np.random.default_rng(2)
    sizes = tmp_path / "Path" / "contents" / "images"
    sizes.mkdir(parents=True)
    _gradient(rng, 48).save(sizes / "small.png")
    Image.fromarray(rng.integers(0, 256, (200, 200, 3), np.uint8)).save(sizes / "large.png")  # more bytes
    _gradient(rng).save(tmp_path / "desert.png")
    _gradient(rng).save(tmp_path / "goldfish.png")  # a wallpaper with a subject of its own
    backgrounds = load_backgrounds([tmp_path])
    assert sorted(b.size for b in backgrounds) == [(96, 96), (200, 200)]
    with pytest.raises(ValueError, match="no images under"):
        load_backgrounds([_empty(tmp_path)])


def test_composites_label_exactly_the_pasted_object():
    red = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    red.paste((255, 0, 0, 255), (5, 5, 35, 35))
    compositor = Compositor([red], [Image.new("RGB", (128, 128), (0, 200, 0))], size=64)
    image, mask = compositor.draw(random.Random(3))
    again, mask_again = compositor.draw(random.Random(3))
    assert torch.equal(image, again) and torch.equal(mask, mask_again)  # seeded
    inside, outside = mask[0] > 0.5, mask[0] < 0.5
    assert 0.05 < inside.float().mean() < 0.9
    assert image[0][inside].mean() > 0.6 > 0.2 > image[0][outside].mean()  # red object, green ground


def test_training_writes_a_decoder_that_learns_the_held_out_cutouts(tmp_path):
    backgrounds = tmp_path / "backgrounds"
    backgrounds.mkdir()
    rng = np.random.default_rng(4)
    for i in range(4):
        _gradient(rng).save(backgrounds / f"wall{i}.png")
    cfg = SubjectTrainConfig(
        cutouts=str(_cutout_folder(tmp_path / "cutouts", 8)), backgrounds=str(backgrounds),
        steps=40, batch=8, size=64, holdout=0.25,
    )  # fmt: skip
    out = tmp_path / "head.safetensors"
    result = train_subject_head(cfg, out, progress=False)
    assert result["cutouts"] == 8 and result["backgrounds"] == 4
    assert result["iou_after"] > max(0.5, result["iou_before"] + 0.1), result
    head = SubjectHead().load_decoder(out)
    assert set(head.decoder_state()) == set(SubjectHead().decoder_state())
    assert not any(name.startswith("trunk.") for name in head.decoder_state())


def test_a_foreign_weights_file_is_refused_by_name(tmp_path):
    foreign = tmp_path / "other.safetensors"
    save_file({"lateral.0.weight": torch.zeros(3)}, str(foreign))
    with pytest.raises(SubjectHeadError, match="other.safetensors"):
        SubjectHead().load_decoder(foreign)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_bundled_head_is_a_one_line_error(tmp_path, monkeypatch, capsys, damage):
    from pstyle.cli.main import main

    weights = tmp_path / "weights"
    weights.mkdir()
    target = weights / "subjects.safetensors"
    shutil.copyfile(subject_head.BUNDLED, target)
    pin([target], weights / "SHA256SUMS")
    if damage == "missing":
        target.unlink()
    else:
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    monkeypatch.setattr(subject_head, "BUNDLED", target)
    monkeypatch.setattr(subject_head, "CHECKSUMS", weights / "SHA256SUMS")
    subject_head._bundled.cache_clear()
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), np.uint8)).save(photo)
    out = tmp_path / "out.png"
    monkeypatch.setattr(sys, "argv", ["pstyle", "stylize", str(photo), "--style", str(photo),
                                      "--mask", "subject", "-o", str(out)])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main()
    subject_head._bundled.cache_clear()
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(lines) == 1 and str(target) in lines[0], lines
    assert ("missing" if damage == "missing" else "sha256") in lines[0]
    assert not out.exists()


def test_train_subjects_needs_exactly_one_destination(tmp_path, monkeypatch, capsys):
    from pstyle.cli.main import main

    for extra in ([], ["--install", "--out", str(tmp_path / "x.safetensors")]):
        monkeypatch.setattr(sys, "argv", ["pstyle", "train-subjects", "--steps", "1", *extra])
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 2 and "exactly one of --out" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()

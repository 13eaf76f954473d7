"""The bundled base model: verified on load, usable with no --model, and doing real style transfer on
real photographs (inference only, seeded)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from pstyle.data.photos import load_real_image, photo_paths, tiles
from pstyle.images import load_image, save_image
from pstyle.models.generator import DOWNSAMPLING
from pstyle.quality.baselines import rgb_to_lab
from pstyle.quality.metrics import ssim, style_distance
from pstyle.training import bundled
from pstyle.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def base():
    model, meta = load_checkpoint(bundled.bundled_model_dir())
    return model.eval(), meta


def _photo(name: str, side: int = 160) -> torch.Tensor:
    image = load_real_image(photo_paths(include_styles=True)[name], side)
    h, w = image.shape[-2:]
    return image[:, : h - h % DOWNSAMPLING, : w - w % DOWNSAMPLING]


def test_bundled_checkpoint_is_small_and_pinned(base):
    model, meta = base
    size = (bundled.BUNDLED_DIR / "model.safetensors").stat().st_size
    assert size <= 25 * 2**20
    assert meta["features"]["kind"] == "efficientnet_lite0" and len(meta["features"]["sha256"]) == 64
    pinned = bundled.CHECKSUMS.read_text()
    assert all(name in pinned for name in bundled.FILES)


@pytest.mark.parametrize(
    ("content", "style"),
    [("china", "crowd_illustration"), ("portrait", "nuclei_micrograph"), ("flower", "stairs")],
)
def test_bundled_base_keeps_content_and_moves_style_on_real_photos(base, content, style):
    """Shipped photos in shipped styles: the layout survives and the pretrained feature statistics move
    toward the style, past where the unchanged photo stands.

    SSIM >= 0.30 on every pair (an output unrelated to the photo scores about 0; the bundled base
    scores 0.41-0.73 here, docs/benchmarks.md).
    """
    model, _ = base
    photo = _photo(content)[None]
    styles = tiles(_photo(style, 256), 96, 2)
    out = model.stylize(photo, styles, seed=0)
    assert ssim(out, photo).item() >= 0.30
    assert style_distance(out, styles).item() < style_distance(photo, styles).item()


def _lab_chroma(images: torch.Tensor) -> float:
    """Mean CIE Lab chroma sqrt(a^2 + b^2): 0 for a grey image, about 20 for these photos."""
    return rgb_to_lab(images)[:, 1:].square().sum(dim=1).sqrt().mean().item()


def test_bundled_base_takes_its_colours_from_the_style(base):
    """A grey style gives a grey picture and a colourful one a colourful picture, whatever the photo's
    own colours: the output's chroma is the style set's (the previous base left 8-9 of the photos'
    chroma showing in grey styles, docs/benchmarks.md)."""
    model, _ = base
    for content, grey_style in [("flower", "stairs"), ("portrait", "nuclei_micrograph")]:
        photo = _photo(content)[None]
        out = model.stylize(photo, tiles(_photo(grey_style, 256), 96, 2), seed=0)
        assert _lab_chroma(photo) > 20 and _lab_chroma(out) < 2, (content, grey_style)
    photo = _photo("china")[None]
    styles = tiles(_photo("crowd_illustration", 256), 96, 2)
    assert _lab_chroma(model.stylize(photo, styles, seed=0)) > 0.8 * _lab_chroma(styles) > _lab_chroma(photo)


def test_bundled_base_draws_no_line_along_the_image_edges(base):
    """Every edge row and column of the output looks like its neighbours: without the generator's
    reflected border the network's zero padding drew a bright line along the top (row-0 mean
    brightness 2.7 x row 1's on this pair) and the left."""
    model, _ = base
    photo = _photo("china")[None]
    out = model.stylize(photo, tiles(_photo("nuclei_micrograph", 256), 96, 2), seed=0)[0].mean(dim=0)
    edges = {"top": (out[0], out[1]), "bottom": (out[-1], out[-2]),
             "left": (out[:, 0], out[:, 1]), "right": (out[:, -1], out[:, -2])}  # fmt: skip
    for side, (edge, inner) in edges.items():
        assert abs(edge.mean() - inner.mean()) < 0.03, side


def _fake_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the bundled files, pinned, that the test may damage (the package's stay untouched)."""
    folder = tmp_path / "weights"
    shutil.copytree(bundled.WEIGHTS_DIR, folder)
    monkeypatch.setattr(bundled, "BUNDLED_DIR", folder / "base")
    monkeypatch.setattr(bundled, "CHECKSUMS", folder / "SHA256SUMS")
    return folder / "base"


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    from pstyle.cli.main import main

    monkeypatch.setattr(sys, "argv", ["pstyle", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_weights_are_one_line_errors_naming_the_file(
    tmp_path, monkeypatch, capsys, damage
):
    folder = _fake_weights(tmp_path, monkeypatch)
    target = folder / "model.safetensors"
    if damage == "missing":
        target.unlink()
    else:
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped bit deep inside the weights
        target.write_bytes(bytes(data))
    photo = tmp_path / "photo.png"
    save_image(_photo("flower", 64), photo)
    code, err = _cli(monkeypatch, capsys, "stylize", photo, "--style", photo, "-o", tmp_path / "out.png")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and str(target) in lines[0], err
    assert ("missing" if damage == "missing" else "sha256") in lines[0]
    assert not (tmp_path / "out.png").exists()


def test_stylize_without_model_uses_the_bundled_base(tmp_path, monkeypatch, capsys):
    photo, style = tmp_path / "photo.png", tmp_path / "style.png"
    save_image(_photo("flower", 96), photo)
    save_image(_photo("crowd_illustration", 96), style)
    out = tmp_path / "out.png"
    with pytest.raises(SystemExit) as exit_info:
        monkeypatch.setattr(
            sys, "argv", ["pstyle", "stylize", str(photo), "--style", str(style), "-o", str(out)]
        )
        from pstyle.cli.main import main

        main()
        raise SystemExit(0)
    assert exit_info.value.code == 0, capsys.readouterr().err
    result, original = load_image(out), load_image(photo)
    assert result.shape == original.shape
    assert (result - original).abs().mean() > 0.02  # restyled, not copied

"""Image I/O: every PIL mode becomes sensible RGB, and every kind of bad file is a one-line ImageError."""

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pstyle.images import (
    ImageError,
    image_to_bytes,
    list_images,
    load_image,
    load_mask,
    mask_to_tensor,
    open_image,
    save_image,
    to_tensor,
)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb_of(data: bytes) -> np.ndarray:
    img = open_image(data)
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


def noise_image(w: int = 64, h: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ---------------------------------------------------------------- modes


def test_gray_8bit() -> None:
    assert (rgb_of(encode(Image.new("L", (40, 40), 128))) == 128).all()


def test_gray_16bit_is_scaled_not_clipped() -> None:
    mid = np.full((40, 40), 128 * 257, dtype=np.uint16)
    data = encode(Image.fromarray(mid))  # 16-bit grayscale PNG
    assert np.abs(rgb_of(data) - 128).max() <= 1


def test_gray_32bit_int_and_float() -> None:
    as_int = encode(Image.fromarray(np.full((40, 40), 30000, dtype=np.int32)), "TIFF")  # mode "I"
    assert np.abs(rgb_of(as_int) - round(30000 / 65535 * 255)).max() <= 1
    as_float = encode(Image.fromarray(np.full((40, 40), 0.5, dtype=np.float32)), "TIFF")  # mode "F" in [0, 1]
    assert np.abs(rgb_of(as_float) - 128).max() <= 1


def test_transparency_becomes_white() -> None:
    assert (rgb_of(encode(Image.new("RGBA", (40, 40), (255, 0, 0, 0)))) == 255).all()
    assert (rgb_of(encode(Image.new("LA", (40, 40), (0, 0)))) == 255).all()
    half_black = rgb_of(encode(Image.new("RGBA", (40, 40), (0, 0, 0, 128))))
    assert np.abs(half_black - 127).max() <= 2


def test_palette_with_and_without_transparency() -> None:
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.paste(1, (0, 0, 20, 40))
    rgb = rgb_of(encode(pal))
    assert (rgb[:, :20] == [200, 100, 50]).all() and (rgb[:, 20:] == [10, 20, 30]).all()
    rgb = rgb_of(encode(pal, transparency=0))
    assert (rgb[:, :20] == [200, 100, 50]).all() and (rgb[:, 20:] == 255).all()


def test_cmyk_and_bilevel() -> None:
    cyan = rgb_of(encode(Image.new("CMYK", (40, 40), (255, 0, 0, 0)), "TIFF"))
    assert (cyan == [0, 255, 255]).all()
    assert (rgb_of(encode(Image.new("1", (40, 40), 1), "BMP")) == 255).all()


def test_animated_uses_first_frame() -> None:
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    rgb = rgb_of(data)
    assert rgb[..., 0].min() > 200 and rgb[..., 2].max() < 50


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (64, 32), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 32, 32))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rgb = rgb_of(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert rgb.shape == (64, 32, 3)  # upright: now tall
    assert rgb[:28, :, 0].mean() > 200 and rgb[36:, :, 2].mean() > 200  # left half is now the top


# ---------------------------------------------------------------- bad files


def one_line_error(path: Path, match: str) -> str:
    with pytest.raises(ImageError, match=match) as info:
        load_image(path)
    msg = str(info.value)
    assert msg.startswith(f"{path.name}: ") and "\n" not in msg
    return msg


def test_zero_byte(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    assert one_line_error(tmp_path / "empty.png", "zero-byte") == "empty.png: zero-byte file"


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_truncated(tmp_path: Path, fmt: str, suffix: str) -> None:
    data = encode(noise_image(), fmt)
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(data[: len(data) // 2])
    one_line_error(path, "truncated")


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hello, I am a text file\n")
    msg = one_line_error(tmp_path / "x.txt", "not an image")
    assert msg == "x.txt: not an image (cannot identify image file)"
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n"  # PIL would run Ghostscript
    with pytest.raises(ImageError, match=r"^a\.eps: not an image"):
        open_image(eps, name="a.eps")


def test_too_small(tmp_path: Path) -> None:
    Image.new("RGB", (20, 20)).save(tmp_path / "tiny.png")
    msg = one_line_error(tmp_path / "tiny.png", "too small")
    assert msg == "tiny.png: too small (20x20 px, need at least 32 px on the shorter side)"
    assert open_image(tmp_path / "tiny.png", min_side=16).size == (20, 20)


def test_missing_file_and_bytes_name(tmp_path: Path) -> None:
    one_line_error(tmp_path / "gone.png", "cannot read")
    with pytest.raises(ImageError, match=r"^<bytes>: not an image"):
        open_image(b"not an image")
    with pytest.raises(ImageError, match=r"^upload\.png: zero-byte"):
        open_image(b"", name="upload.png")


def test_decompression_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 > 2x the limit: PIL raises
    with pytest.raises(ImageError, match=r"^bomb\.png: image too large"):
        open_image(encode(noise_image()), name="bomb.png")


def test_image_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(ImageError("a.png", "zero-byte file")))
    assert str(err) == "a.png: zero-byte file" and err.reason == "zero-byte file"


# ---------------------------------------------------------------- tensors and saving


def test_to_tensor_resize_and_center_crop() -> None:
    img = Image.new("RGB", (80, 40), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 40))  # leftmost quarter red: exactly what the crop removes
    t = to_tensor(img, 32)
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32
    assert t[0].mean() < 0.05 and t[2].mean() > 0.95
    assert to_tensor(img).shape == (3, 40, 80)


def test_mask_geometry_matches_image_and_is_binary() -> None:
    m = Image.new("L", (90, 50), 0)
    m.paste(255, (30, 10, 70, 40))
    rgb = Image.merge("RGB", [m, m, m])
    mask, image = mask_to_tensor(m, 32), to_tensor(rgb, 32)
    assert mask.shape == (1, 32, 32) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert ((image[0] > 0.5) == (mask[0] > 0.5)).float().mean() > 0.98


def test_save_load_round_trip(tmp_path: Path) -> None:
    t = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(0))
    save_image(t, tmp_path / "sub" / "a.png")
    assert (load_image(tmp_path / "sub" / "a.png") - t).abs().max() <= 1 / 255
    assert list((tmp_path / "sub").iterdir()) == [tmp_path / "sub" / "a.png"]  # no temp file left
    mask = (t[:1] > 0.5).float()
    save_image(mask.expand(3, -1, -1), tmp_path / "m.png")
    assert torch.equal(load_mask(tmp_path / "m.png"), mask)


def test_save_lossy_formats(tmp_path: Path) -> None:
    t = torch.linspace(0, 1, 64).expand(3, 48, 64).contiguous()  # smooth: compresses faithfully
    for suffix in (".jpg", ".jpeg", ".webp"):
        save_image(t, tmp_path / f"a{suffix}")
        assert (load_image(tmp_path / f"a{suffix}") - t).abs().mean() < 0.02
    with pytest.raises(ValueError, match="unsupported"):
        save_image(t, tmp_path / "a.gif")


def test_save_batch_as_grid(tmp_path: Path) -> None:
    batch = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    save_image(batch, tmp_path / "grid.png", nrow=2)
    grid = load_image(tmp_path / "grid.png")
    assert grid.shape == (3, 2 * 32 + 3 * 2, 2 * 32 + 3 * 2)  # 2x2 tiles, 2 px padding
    assert (grid[:, 2:34, 36:68] - batch[1]).abs().max() <= 1 / 255


def test_image_to_bytes() -> None:
    t = torch.rand(3, 36, 36, generator=torch.Generator().manual_seed(2))
    assert (to_tensor(open_image(image_to_bytes(t))) - t).abs().max() <= 1 / 255
    assert image_to_bytes(t, "jpeg")[:2] == b"\xff\xd8"
    assert image_to_bytes(t, "webp")[8:12] == b"WEBP"


def test_list_images(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpg", "c.webp", "d.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.webp"]


def test_draft_decodes_large_jpegs_smaller_but_never_below_the_side_asked_for() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (1600, 1000), (200, 30, 30)).save(buf, "JPEG")
    drafted = open_image(buf.getvalue(), "big.jpg", draft_side=120)
    assert drafted.size == (200, 125)  # 1/8 scale: both sides still >= 120
    assert open_image(buf.getvalue(), "big.jpg", draft_side=600).size == (1600, 1000)  # 1/2 would be < 600
    buf = io.BytesIO()
    Image.new("RGB", (1600, 1000)).save(buf, "PNG")
    assert open_image(buf.getvalue(), "big.png", draft_side=120).size == (1600, 1000)  # PNG: no draft

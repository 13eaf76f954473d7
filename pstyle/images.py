"""Robust image I/O: every image enters pstyle through `open_image` and leaves through `save_image`.

Users upload whatever their phone or editor produced (16-bit PNGs, CMYK JPEGs, transparent
stickers, rotated photos, half-uploaded files). Opening is the one place that normalises all of it
to 8-bit RGB, or fails with a one-line `ImageError` naming the file, so no caller ever sees a
PIL traceback or a silently wrong image.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.utils import make_grid

from pstyle.store.atomic import atomic_write

MIN_SIDE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
# Decoders offered untrusted uploads: common raster formats only, never e.g. EPS (PIL runs Ghostscript).
_OPEN_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")


class ImageError(ValueError):
    """A file that is not a usable image; `str()` is one line: '<name>: <reason>'.

    Name and reason are kept as the exception args so it pickles intact (Ray ships errors across
    processes) and so callers can re-phrase it, e.g. 'skipping <name>: <reason>'.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, reason)
        self.name, self.reason = name, reason

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


def open_image(
    source: str | Path | bytes,
    name: str | None = None,
    min_side: int = MIN_SIDE,
    max_pixels: int | None = None,
    single_frame: bool = False,
    draft_side: int | None = None,
) -> Image.Image:
    """Open a path or raw bytes as a fully decoded, upright, 8-bit RGB image, or raise ImageError.

    `max_pixels` refuses larger images from the header, before decoding (a server's bomb guard, far
    below PIL's own limit); `single_frame` refuses animated and multi-page files instead of taking
    their first frame. `draft_side` lets a JPEG decode at 1/2, 1/4 or 1/8 scale (its DCT scaling) as
    long as both sides stay at least that: a caller that resizes down anyway decodes up to 64x fewer
    pixels, which is most of what a large upload costs a server.
    """
    if isinstance(source, bytes):
        name = name or "<bytes>"
        data = source
    else:
        path = Path(source)
        name = name or path.name
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageError(name, f"cannot read file ({e.strerror or e})") from e
    if not data:
        raise ImageError(name, "zero-byte file")
    try:
        img = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ImageError(name, f"too many pixels ({img.width}x{img.height}, the limit is {max_pixels})")
        if single_frame and getattr(img, "n_frames", 1) > 1:
            raise ImageError(name, f"animated or multi-page image ({img.n_frames} frames): send one frame")
        img.seek(0)  # first frame of animated GIF/WEBP/APNG
        if draft_side is not None:
            img.draft("RGB", (draft_side, draft_side))  # a no-op for formats without reduced decoding
        img.load()  # decode now (PIL's LOAD_TRUNCATED_IMAGES is left False): truncation fails here
        img = ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except UnidentifiedImageError as e:
        raise ImageError(name, "not an image (cannot identify image file)") from e
    except Image.DecompressionBombError as e:
        raise ImageError(name, f"image too large ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL's ways of saying "corrupt"
        reason = str(e).strip() or type(e).__name__
        raise ImageError(name, f"truncated or corrupt image file ({reason})") from e
    w, h = img.size
    if min(w, h) < min_side:
        raise ImageError(name, f"too small ({w}x{h} px, need at least {min_side} px on the shorter side)")
    try:
        return _to_rgb(img)
    except ValueError as e:  # a mode PIL cannot convert, e.g. LAB
        raise ImageError(name, f"unsupported colour mode {img.mode}") from e


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency becomes white, high bit depths are rescaled."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _high_depth_to_l(img)
    if "A" in img.mode or "a" in img.mode or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, RGBX, ...


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit/32-bit/float grayscale -> 8-bit "L", scaled rather than clipped (PIL's convert clips).

    "I;16*" is 16-bit by definition. "I" and "F" carry no bit depth, so guess it from the values:
    up to 1 (float) or 255 is already 8-bit scale, up to 65535 is 16-bit, beyond that normalise.
    """
    a = np.asarray(img, dtype=np.float64)
    top = float(a.max(initial=0.0))
    if img.mode.startswith("I;16"):
        full = 65535.0
    elif img.mode == "F" and top <= 1.0:
        full = 1.0
    elif top <= 255.0:
        full = 255.0
    elif top <= 65535.0:
        full = 65535.0
    else:
        full = top
    out = Image.fromarray(np.round(np.clip(a / full, 0.0, 1.0) * 255).astype(np.uint8), mode="L")
    out.info = {k: v for k, v in img.info.items() if k != "transparency"}
    return out


def resize_shorter_side(
    img: Image.Image, size: int, resample: Image.Resampling = Image.Resampling.BICUBIC
) -> Image.Image:
    """Scale so the shorter side is `size`, keeping the aspect ratio (antialiased when shrinking:
    PIL filters with the scaled kernel)."""
    w, h = img.size
    scale = size / min(w, h)
    return img.resize((max(size, round(w * scale)), max(size, round(h * scale))), resample)


def _resize_crop(img: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """Scale the shorter side to `size` then center-crop a size x size square."""
    img = resize_shorter_side(img, size, resample)
    nw, nh = img.size
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image, size: int | None = None) -> torch.Tensor:
    """RGB PIL image -> float32 (3, H, W) in [0, 1]; square size x size when `size` is given."""
    img = img.convert("RGB")
    if size is not None:
        img = _resize_crop(img, size, Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def mask_to_tensor(img: Image.Image, size: int | None = None) -> torch.Tensor:
    """Mask image -> binary float32 (1, H, W), same geometry as `to_tensor` (1 = subject).

    Resized bilinearly (antialiased) then thresholded at 0.5 rather than resized nearest: each
    output pixel becomes 1 when most of its footprint was subject, so boundaries stay where the
    image's are and thin parts neither alias nor shift by half a pixel. The mask stays binary.
    """
    img = img.convert("L")
    if size is not None:
        img = _resize_crop(img, size, Image.Resampling.BILINEAR)
    m = torch.from_numpy(np.array(img, dtype=np.float32) / 255.0)
    return (m >= 0.5).float().unsqueeze(0)


def load_image(path: str | Path, size: int | None = None) -> torch.Tensor:
    """Open, validate and convert an image file to a (3, H, W) tensor."""
    return to_tensor(open_image(path), size)


def load_mask(path: str | Path, size: int | None = None) -> torch.Tensor:
    """Open, validate and convert a mask file to a binary (1, H, W) tensor."""
    return mask_to_tensor(open_image(path), size)


def _to_pil(t: torch.Tensor, nrow: int = 8) -> Image.Image:
    if t.dim() == 4:
        t = make_grid(t, nrow=nrow, padding=2, pad_value=1.0)
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) or (B, 3, H, W) tensor, got shape {tuple(t.shape)}")
    a = (t.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(a, mode="RGB")


def _format(suffix_or_name: str) -> str:
    key = "." + suffix_or_name.lower().lstrip(".")
    if key not in _SAVE_FORMATS:
        raise ValueError(f"unsupported image format {suffix_or_name!r} (use png, jpeg or webp)")
    return _SAVE_FORMATS[key]


def _encode(img: Image.Image, fmt: str, fp: BinaryIO) -> None:
    img.save(fp, format=fmt, **({} if fmt == "PNG" else {"quality": 95}))


def save_image(t: torch.Tensor, path: str | Path, nrow: int = 8) -> None:
    """Write a (3, H, W) image or a (B, 3, H, W) grid as PNG/JPEG/WEBP, chosen by suffix.

    Written to a temp file in the same folder then renamed, so readers (a web server, a resumed
    run) never see half a file.
    """
    path = Path(path)
    fmt = _format(path.suffix)
    img = _to_pil(t, nrow)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            _encode(img, fmt, f)

    atomic_write(path, write)


def image_to_bytes(t: torch.Tensor, fmt: str = "png") -> bytes:
    """Encode a (3, H, W) tensor as png, jpeg or webp bytes (e.g. for an HTTP response)."""
    if t.dim() != 3:
        raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(t.shape)}")
    buf = io.BytesIO()
    _encode(_to_pil(t), _format(fmt), buf)
    return buf.getvalue()


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in `folder`, sorted; hidden files (e.g. macOS '._x.png') are ignored."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )

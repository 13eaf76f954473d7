"""`pstyle data import`: any image folders, local or on S3, into the layout `train-base` reads.

A cluster user points this at a COCO-like folder of photos (content) and a WikiArt-like folder with
one sub-folder per style or artist (styles); the result is the same `content/images` +
`styles/<user>/` layout that `pstyle data synth` writes. Every file is decoded once through the
one image gate (`pstyle.images.open_image`), resized so its shorter side is `size`, and re-encoded
as PNG; unreadable files are skipped with a warning naming them. Reading goes through the store
abstraction, so `s3://bucket/prefix` uses boto3's standard credential chain.
"""

from __future__ import annotations

import warnings
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from pstyle.ids import ID_PATTERN
from pstyle.images import IMAGE_SUFFIXES, ImageError, open_image, resize_shorter_side
from pstyle.store import open_store


def _images(uri: str) -> tuple[object, list[str]]:
    store = open_store(uri)
    keys = sorted(k for k in store.list("") if PurePosixPath(k).suffix.lower() in IMAGE_SUFFIXES)
    if not keys:
        raise FileNotFoundError(f"{uri}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return store, keys


def _convert(store: object, key: str, out: Path, size: int) -> bool:
    """One image into `out` as PNG; False (with a warning) when it cannot be read."""
    try:
        image = open_image(store.get_bytes(key), name=key)
    except ImageError as exc:
        warnings.warn(f"skipping {exc}", stacklevel=3)
        return False
    if min(image.size) > size:
        image = resize_shorter_side(image, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    return True


def import_folders(content: str, styles: str, out: Path, size: int = 256, min_per_style: int = 3) -> Path:
    """content: a folder of photos (nested folders are flattened); styles: one sub-folder per style.

    Styles with fewer than `min_per_style` readable images are left out (a held-out split needs them).
    """
    out = Path(out)
    store, keys = _images(content)
    written = 0
    for i, key in enumerate(tqdm(keys, desc="content", disable=None)):
        written += _convert(store, key, out / "content" / "images" / f"{i:07d}.png", size)
    if not written:
        raise ValueError(f"{content}: no readable images")
    store, keys = _images(styles)
    by_style: dict[str, list[str]] = {}
    for key in keys:
        parts = PurePosixPath(key).parts
        if len(parts) >= 2:
            by_style.setdefault(parts[0], []).append(key)
    kept = 0
    for name, members in tqdm(sorted(by_style.items()), desc="styles", disable=None):
        if not ID_PATTERN.fullmatch(name):  # it becomes a user id and a folder name
            warnings.warn(f"leaving out style {name!r}: use letters, digits, '_' or '-'", stacklevel=2)
            continue
        folder = out / "styles" / name
        n = sum(_convert(store, key, folder / f"{j:05d}.png", size) for j, key in enumerate(members))
        if n < min_per_style:
            warnings.warn(
                f"leaving out style {name!r}: {n} readable images, need {min_per_style}", stacklevel=2
            )
            for path in folder.glob("*.png"):
                path.unlink()
            folder.rmdir()
        else:
            kept += 1
    if not kept:
        raise ValueError(f"{styles}: no style sub-folder has {min_per_style} readable images")
    return out

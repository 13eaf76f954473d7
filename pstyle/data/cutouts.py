"""Training pairs for the subject head: object cutouts pasted onto backgrounds, labelled by their alpha.

No segmentation data set can be downloaded here, but Debian ships photographs of single objects with
an alpha channel: Tux Paint's stamps (`apt-get install tuxpaint-stamps-default`: animals, food,
vehicles, tools, plants...). Pasted onto a background, a cutout is a subject whose mask is exactly
known. Backgrounds come from Debian's desktop wallpapers (`gnome-backgrounds`,
`plasma-workspace-wallpapers`, `ukui-wallpapers`): landscapes, textures and abstract art without a
subject of their own. Any folder of RGBA PNGs and any folder of images work the same way, so a
cluster user can point these at a larger cutout set.

scikit-image's photos, which the subject figure is measured on, and the shipped photos the method's
settings are checked on (`evaluation/subjects.py`'s dev split) are never used as backgrounds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import Tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MIN_COLOURS = 1000  # distinct colours (6 bits per channel) a cutout needs: photos, not flat clip art
COVER_RANGE = (0.1, 0.95)  # share of its box a cutout's alpha covers: objects, not frames or specks
CUTOUT_SIDE = 320  # cutouts are kept at most this large (they are pasted at most 0.9 of the output)
BACKGROUND_SIDE = 1024
# Wallpapers with a subject of their own (a flower, a fish, a mascot, boats, a leaf...): as background
# they would teach the head that subjects are background.
SUBJECT_WALLPAPERS = frozenset(
    {"calla", "firstgeneration", "focal-ubuntukylin", "symbolic", "goldfish", "the-mouse", "Autumn",
     "EveningGlow", "FallenLeaf", "FlyingKonqui", "SafeLanding"}
)  # fmt: skip


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _is_cutout(image: Image.Image) -> bool:
    """An RGBA image of one detailed object: alpha covers part of its box, with many distinct colours."""
    if "A" not in image.getbands():
        return False
    rgba = np.asarray(image.convert("RGBA"))
    inside = rgba[..., 3] > 128
    if not COVER_RANGE[0] < inside.mean() < COVER_RANGE[1]:
        return False
    colours = np.unique(rgba[..., :3][inside] // 4, axis=0)
    return len(colours) > MIN_COLOURS


def load_cutouts(folder: Path) -> list[Image.Image]:
    """Every cutout under `folder` (recursively), cropped to its alpha's box, at most CUTOUT_SIDE."""
    cutouts = []
    for path in _images_under(folder):
        if path.suffix.lower() != ".png":
            continue
        with Image.open(path) as image:
            if not _is_cutout(image):
                continue
            rgba = image.convert("RGBA")
        rgba = rgba.crop(rgba.getchannel("A").point(lambda a: 255 if a > 20 else 0).getbbox())
        rgba.thumbnail((CUTOUT_SIDE, CUTOUT_SIDE))
        cutouts.append(rgba)
    if not cutouts:
        raise ValueError(f"{folder}: no RGBA cutouts (PNGs with a partial alpha channel) found")
    return cutouts


def _wallpaper_name(path: Path) -> str:
    """KDE keeps one wallpaper in several sizes under NAME/contents/images*/; GNOME's has -l/-d twins."""
    if "contents" in path.parts:
        return path.parts[path.parts.index("contents") - 1]
    return path.stem.removesuffix("-l").removesuffix("-d")


def wallpaper_files(folders: list[Path]) -> dict[str, Path]:
    """Wallpaper name -> its largest image file under `folders`, sorted by name."""
    largest: dict[str, Path] = {}
    for folder in folders:
        for path in _images_under(folder):
            name = _wallpaper_name(path)
            if name not in largest or path.stat().st_size > largest[name].stat().st_size:
                largest[name] = path
    if not largest:
        raise ValueError(f"no images under {', '.join(str(f) for f in folders)}")
    return dict(sorted(largest.items()))


def load_wallpaper(path: Path, side: int = BACKGROUND_SIDE) -> Image.Image:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    rgb.thumbnail((side, side))
    return rgb


def load_backgrounds(folders: list[Path]) -> list[Image.Image]:
    """One RGB image per wallpaper under `folders` (its largest file), skipping SUBJECT_WALLPAPERS."""
    files = [path for name, path in wallpaper_files(folders).items() if name not in SUBJECT_WALLPAPERS]
    if not files:
        raise ValueError(f"only wallpapers with a subject under {', '.join(str(f) for f in folders)}")
    return [load_wallpaper(path) for path in files]


@dataclass
class Compositor:
    """Draws (image, mask) pairs: a background crop with one to three cutouts pasted near the centre.

    Augmentation covers what photographs vary in: crop scale and flips, a blurred background (depth of
    field) or a blurred whole image, object size and position, brightness and contrast of the object
    against its background, and soft alpha edges, so the head cannot find subjects by a hard seam.
    """

    cutouts: list[Image.Image]
    backgrounds: list[Image.Image]
    size: int

    def _background(self, rng: random.Random) -> Image.Image:
        image = self.backgrounds[rng.randrange(len(self.backgrounds))]
        w, h = image.size
        side = int(min(w, h) * rng.uniform(0.25, 1.0))
        x, y = rng.randrange(w - side + 1), rng.randrange(h - side + 1)
        crop = image.crop((x, y, x + side, y + side)).resize((self.size, self.size), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        if rng.random() < 0.4:
            crop = crop.filter(ImageFilter.GaussianBlur(rng.uniform(1, 4)))
        return crop

    def _paste(self, canvas: Image.Image, mask: Image.Image, rng: random.Random, main: bool) -> None:
        cutout = self.cutouts[rng.randrange(len(self.cutouts))]
        if rng.random() < 0.5:
            cutout = cutout.transpose(Image.FLIP_LEFT_RIGHT)
        s = self.size
        scale = (rng.uniform(0.35, 0.9) if main else rng.uniform(0.2, 0.5)) * s / max(cutout.size)
        w, h = max(8, int(cutout.size[0] * scale)), max(8, int(cutout.size[1] * scale))
        cutout = cutout.resize((w, h), Image.BILINEAR)
        cx, cy = s / 2 + rng.gauss(0, 0.18) * s, s / 2 + rng.gauss(0, 0.18) * s
        x = int(min(max(cx - w / 2, -0.2 * w), s - 0.8 * w))
        y = int(min(max(cy - h / 2, -0.2 * h), s - 0.8 * h))
        alpha = cutout.getchannel("A")
        soft = alpha.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2))) if rng.random() < 0.5 else alpha
        rgb = np.asarray(cutout.convert("RGB"), dtype=np.float32)
        rgb = rgb * rng.uniform(0.7, 1.2) + rng.uniform(-20, 20)
        canvas.paste(Image.fromarray(rgb.clip(0, 255).astype(np.uint8)), (x, y), soft)
        mask.paste(255, (x, y, x + w, y + h), alpha.point(lambda a: 255 if a > 127 else 0))

    def draw(self, rng: random.Random) -> tuple[Tensor, Tensor]:
        """(3,S,S) image in [0,1] and (1,S,S) binary mask of every pasted cutout."""
        canvas, mask = self._background(rng), Image.new("L", (self.size, self.size), 0)
        for k in range(1 if rng.random() < 0.7 else rng.randint(2, 3)):
            self._paste(canvas, mask, rng, main=k == 0)
        if rng.random() < 0.3:
            canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
        image = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255).permute(2, 0, 1)
        gain = torch.tensor([rng.uniform(0.85, 1.15) for _ in range(3)]).view(3, 1, 1)
        truth = torch.from_numpy(np.asarray(mask) > 127).float()[None]
        return (image * gain).clamp(0, 1), truth

    def batch(self, rng: random.Random, n: int) -> tuple[Tensor, Tensor]:
        images, masks = zip(*(self.draw(rng) for _ in range(n)), strict=True)
        return torch.stack(images), torch.stack(masks)

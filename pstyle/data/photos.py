"""Real images that installed packages ship, for training content and style.

No dataset download works everywhere pstyle must run, so the bundled base learns from the few
real images that scikit-learn, matplotlib, mahotas and PyWavelets carry, multiplied by
augmentation (`augment.py`). Photographs serve as content and as styles; an illustration and a
micrograph serve as styles only. scikit-image's images are deliberately absent: they are reserved
for independent evaluation (`eval_photos.py`) and must never be trained or tuned on.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pstyle.data.cutouts import load_wallpaper, wallpaper_files
from pstyle.images import open_image, resize_shorter_side, to_tensor

# name -> (package, file inside it); .npz files hold one uint8 array under "data"
PHOTOS = {
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    "portrait": ("mahotas", "demos/data/luispedro.jpg"),
    "aerial": ("pywt", "data/aero.npz"),
    "stairs": ("pywt", "data/ascent.npz"),
}
STYLE_ONLY = {
    "crowd_illustration": ("mahotas", "demos/data/DepartmentStore.jpg"),
    "nuclei_micrograph": ("mahotas", "demos/data/nuclear.png"),
}


def _locate(name: str, package: str, relative: str) -> Path:
    """The file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"training image {name!r} needs the package {package!r}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"training image {name!r}: {path} is missing from {package!r}")
    return path


def photo_paths(include_styles: bool = False) -> dict[str, Path]:
    """Name -> file of every shipped training photo (and, with `include_styles`, the style-only images)."""
    table = {**PHOTOS, **(STYLE_ONLY if include_styles else {})}
    return {name: _locate(name, package, relative) for name, (package, relative) in table.items()}


def load_real_image(path: Path, max_side: int = 512) -> torch.Tensor:
    """(3,H,W) in [0,1], shorter side at most `max_side` (crops are resized further anyway)."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            image = Image.fromarray(archive["data"].astype(np.uint8)).convert("RGB")
    else:
        image = open_image(path)
    if min(image.size) > max_side:
        image = resize_shorter_side(image, max_side)
    return to_tensor(image)


def load_training_images(include_styles: bool = False, max_side: int = 512) -> dict[str, torch.Tensor]:
    return {name: load_real_image(path, max_side) for name, path in photo_paths(include_styles).items()}


def tiles(image: torch.Tensor, size: int, count: int) -> torch.Tensor:
    """`count` non-overlapping size x size tiles of (3,H,W), spread evenly over the image (K,3,S,S).

    Distinct regions of one image make a style set whose held-out members were never seen in
    training, unlike random crops that may overlap.
    """
    _, h, w = image.shape
    grid = [(y, x) for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]
    if len(grid) < count:
        raise ValueError(f"a {w}x{h} image has {len(grid)} tiles of {size} px, not {count}")
    picks = torch.linspace(0, len(grid) - 1, count).round().long().tolist()
    return torch.stack([image[:, y : y + size, x : x + size] for y, x in (grid[i] for i in picks)])


def real_style_users(size: int = 128, count: int = 8) -> dict[str, torch.Tensor]:
    """Four users whose style sets are real images: tiles of an illustration, a micrograph and two
    photographs (all shipped by packages, none from the evaluation set)."""
    names = ("crowd_illustration", "nuclei_micrograph", "china", "flower")
    images = load_training_images(include_styles=True)
    return {name: tiles(images[name], size, count) for name in names}


def wallpaper_style_users(
    n_users: int, folders: list[Path], size: int = 128, count: int = 8, seed: int = 0
) -> dict[str, torch.Tensor]:
    """`n_users` users whose style sets are tiles of one desktop wallpaper each (Debian's: paintings,
    illustrations, photographs and abstract art), drawn at random by `seed` from every wallpaper
    under `folders`, so no one chose which styles an adapter is measured on."""
    files = wallpaper_files(folders)
    if n_users > len(files):
        raise ValueError(f"{n_users} wallpaper users asked for, {len(files)} wallpapers installed")
    names = random.Random(seed).sample(sorted(files), n_users)
    return {name: tiles(to_tensor(resize_shorter_side(load_wallpaper(files[name]), 512)), size, count)
            for name in names}  # fmt: skip


def photo_crops(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """`count` augmented crops of the shipped photographs (content for adapter training), (N,3,S,S)."""
    from pstyle.data.augment import augment

    gen = torch.Generator().manual_seed(seed)
    photos = [image for name, image in load_training_images().items()]
    return torch.stack([augment(photos[i % len(photos)], size, gen) for i in range(count)])

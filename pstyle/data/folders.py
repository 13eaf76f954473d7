"""Image-folder datasets: content images (optionally with masks) and per-user style images.

User folders are messy: half-uploaded files, renamed text files, thumbnails. Every file is opened
once at construction; bad ones are skipped with a warning naming them, so a training run never
dies hours in on file 9,000 and the user learns exactly which files were ignored. Datasets here
are small, so decoded tensors are simply kept in memory.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch.utils.data import Dataset

from pstyle.data.splits import holdout_split
from pstyle.images import ImageError, list_images, load_image, load_mask


def _load_valid(paths: list[Path], size: int) -> tuple[list[Path], list[torch.Tensor]]:
    """Load every readable image; warn once per bad file, naming it."""
    good, tensors = [], []
    for path in paths:
        try:
            tensors.append(load_image(path, size))
        except ImageError as e:
            warnings.warn(f"skipping {path.name}: {e.reason}", stacklevel=3)
            continue
        good.append(path)
    return good, tensors


class ContentFolder(Dataset):
    """Content images from a plain folder, or a synth-style folder with images/ and masks/.

    Items are {"image": (3, S, S)} plus {"mask": (1, S, S)} when `with_masks`; masks are paired
    with images by file stem, and an image whose mask is missing or bad is skipped.
    """

    def __init__(self, root: str | Path, size: int, with_masks: bool = False) -> None:
        root = Path(root)
        self.with_masks = with_masks
        image_dir = root / "images" if (root / "images").is_dir() else root
        mask_dir = root / "masks"
        if with_masks and not mask_dir.is_dir():
            raise ValueError(f"{root}: with_masks=True needs a masks/ folder beside images/")
        masks = {p.stem: p for p in list_images(mask_dir)} if with_masks else {}

        self.paths, self.images = _load_valid(list_images(image_dir), size)
        self.masks: list[torch.Tensor] = []
        if with_masks:
            keep = []
            for i, path in enumerate(self.paths):
                if path.stem not in masks:
                    warnings.warn(f"skipping {path.name}: no mask {path.stem}.* in masks/", stacklevel=2)
                    continue
                try:
                    self.masks.append(load_mask(masks[path.stem], size))
                except ImageError as e:
                    warnings.warn(f"skipping {path.name}: bad mask {e}", stacklevel=2)
                    continue
                keep.append(i)
            self.paths = [self.paths[i] for i in keep]
            self.images = [self.images[i] for i in keep]
        if not self.paths:
            raise ImageError(str(image_dir), "no valid images")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"image": self.images[i]}
        if self.with_masks:
            item["mask"] = self.masks[i]
        return item


class StyleUsers:
    """Style images per user, from `root/<user_id>/*.png`; users with no valid image are left out."""

    def __init__(self, root: str | Path, size: int) -> None:
        self._images: dict[str, torch.Tensor] = {}
        for folder in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
            _, tensors = _load_valid(list_images(folder), size)
            if tensors:
                self._images[folder.name] = torch.stack(tensors)
            else:
                warnings.warn(f"skipping user {folder.name}: no valid style images", stacklevel=2)

    @property
    def user_ids(self) -> list[str]:
        return list(self._images)

    def images(self, user_id: str) -> torch.Tensor:
        """(K, 3, S, S) style images of one user (a copy: callers may modify it in place)."""
        if user_id not in self._images:  # ids are only ever looked up, never joined into a path
            raise KeyError(f"unknown user id {user_id!r}")
        return self._images[user_id].clone()

    def split(self, user_id: str, holdout: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, held-out) images of one user: `pstyle.data.splits.holdout_split`."""
        return holdout_split(self.images(user_id), user_id, holdout, seed)


def load_style_images(paths: list[Path], size: int) -> torch.Tensor:
    """(K, 3, S, S) from explicit files; the first bad file raises ImageError (the CLI reports it)."""
    if not paths:
        raise ValueError("no style images given")
    return torch.stack([load_image(p, size) for p in paths])

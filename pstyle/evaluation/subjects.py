"""Subject masks scored against hand-labelled polygons (`data/subject_masks.json`).

Two splits: `dev`, the shipped training photos on which the method's settings were chosen, and
`eval`, scikit-image's photos, never looked at while choosing them: the reported figure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.utils import save_image

from pstyle.data.eval_photos import content_paths
from pstyle.data.photos import load_real_image, photo_paths

LABELS = Path(__file__).parents[1] / "data" / "subject_masks.json"
Masker = Callable[[Tensor], Tensor]  # (1,3,H,W) in [0,1] -> (1,1,H,W) binary


def labelled_photos(split: str) -> dict[str, tuple[Tensor, Tensor]]:
    """name -> (photo (3,H,W), hand-labelled mask (H,W) bool) at the source resolution."""
    if split not in ("dev", "eval"):
        raise ValueError(f"split must be dev or eval, got {split!r}")
    polygons = json.loads(LABELS.read_text())[split]
    paths = content_paths() if split == "eval" else photo_paths()
    out = {}
    for name, shapes in polygons.items():
        photo = load_real_image(paths[name], max_side=100_000)
        canvas = Image.new("L", (photo.shape[2], photo.shape[1]), 0)
        draw = ImageDraw.Draw(canvas)
        for shape in shapes:
            draw.polygon([tuple(point) for point in shape], fill=1)
        out[name] = (photo, torch.from_numpy(np.array(canvas)).bool())
    return out


@torch.no_grad()
def subject_iou(masker: Masker, split: str = "eval") -> dict[str, float]:
    """IoU of `masker`'s subject against the labels, per photo, plus their mean under "mean"."""
    scores = {}
    for name, (photo, truth) in labelled_photos(split).items():
        predicted = masker(photo[None])[0, 0] >= 0.5
        scores[name] = ((predicted & truth).sum() / (predicted | truth).sum()).item()
    scores["mean"] = sum(scores.values()) / len(scores)
    return scores


@torch.no_grad()
def mask_grid(masker: Masker, split: str, path: Path, height: int = 200) -> None:
    """A PNG of every labelled photo: `masker`'s subject at full brightness, the rest dimmed, and the
    hand-drawn outline in yellow, so a person can see what each IoU stands for."""
    tiles, yellow = [], torch.tensor([1.0, 0.9, 0.0]).view(3, 1, 1)
    for photo, truth in labelled_photos(split).values():
        mask = masker(photo[None])[0]
        label = truth[None, None].float()
        outline = (F.max_pool2d(label, 9, 1, 4) - label)[0].bool()  # a band just outside the label
        shown = torch.where(outline, yellow, photo * (0.25 + 0.75 * mask))
        width = round(height * photo.shape[2] / photo.shape[1])
        shown = F.interpolate(shown[None], size=(height, width), mode="area")[0]
        tiles.append(F.pad(shown, (0, max(0, 3 * height // 2 - width)), value=1.0)[..., : 3 * height // 2])
    save_image(torch.stack(tiles), path, nrow=4, padding=4, pad_value=1.0)

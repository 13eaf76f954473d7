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
from PIL import Image, ImageDraw
from torch import Tensor

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

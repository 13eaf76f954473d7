"""Real-photo evaluation: every content photo in every style, scored for content kept and style moved.

What a user sees is judged here: photographs (not procedural scenes) at a useful size, each method
called exactly as the CLI would call it, and the numbers next to a grid of the pictures. Every
(content, style) pair counts once; each style image is its own one-image style set.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from pstyle.adapters import load_adapter, set_active_adapter, style_code
from pstyle.images import list_images, open_image, resize_shorter_side, save_image, to_tensor
from pstyle.models.generator import DOWNSAMPLING
from pstyle.models.style_model import StyleModel
from pstyle.quality.metrics import color_distance, content_distance, ssim, style_distance, swd
from pstyle.training.checkpoint import fingerprint

Method = Callable[[Tensor, Tensor], Tensor]  # (content (1,3,H,W), styles (K,3,h,w)) -> (1,3,H,W)
METRICS = {  # name -> (what it says, which direction is better)
    "ssim": ("content SSIM", "higher"),
    "content": ("perceptual content distance", "lower"),
    "style": ("feature-statistics style distance", "lower"),
    "swd": ("patch SWD to the style x1e3", "lower"),
    "color": ("Lab colour distance", "lower"),
}


def load_photos(folder: Path, size: int) -> dict[str, Tensor]:
    """Every image in `folder`, shorter side `size`, cropped to the generator's stride: name -> (3,H,W)."""
    photos = {}
    for path in list_images(Path(folder)):
        image = to_tensor(resize_shorter_side(open_image(path), size))
        h, w = image.shape[-2:]
        photos[path.stem] = image[:, : h - h % DOWNSAMPLING, : w - w % DOWNSAMPLING]
    if not photos:
        raise FileNotFoundError(f"{folder}: no images")
    return photos


def photo_methods(model: StyleModel, adapter_dir: Path | None = None, seed: int = 0) -> dict[str, Method]:
    """identity, Reinhard, the base model's zero-shot stylization and (optionally) a user's adapter."""
    from pstyle.quality.baselines import BASELINES

    methods: dict[str, Method] = {**BASELINES, "base": lambda c, s: model.stylize(c, s, seed=seed)}
    if adapter_dir is not None:
        generator = copy.deepcopy(model.generator)
        load_adapter(adapter_dir, generator, "user", fingerprint(model))
        set_active_adapter(generator, "user")
        code = style_code(generator, "user").detach()

        def adapter(content: Tensor, styles: Tensor) -> Tensor:
            noise = generator.make_noise(content, seed)
            return generator(content, code.expand(len(content), -1), noise).clamp(0, 1)

        methods["adapter"] = adapter
    return methods


@torch.no_grad()
def score_pair(out: Tensor, content: Tensor, style: Tensor, seed: int = 0) -> dict[str, float]:
    """All five metrics for one output (1,3,H,W) of content (1,3,H,W) in style set (K,3,h,w)."""
    out = out.clamp(0, 1).float()
    return {
        "ssim": ssim(out, content).item(),
        "content": content_distance(out, content).item(),
        "style": style_distance(out, style).item(),
        "swd": swd(out, style, seed=seed)["mean"],
        "color": color_distance(out, style, seed=seed).item(),
    }


@torch.no_grad()
def evaluate_photos(
    methods: dict[str, Method],
    contents: dict[str, Tensor],
    styles: dict[str, Tensor],
    progress: bool = True,
) -> dict:
    """Mean of every metric per method over all (content, style) pairs, plus the per-pair scores."""
    pairs: dict[str, dict[str, dict[str, float]]] = {name: {} for name in methods}
    jobs = [(c, s) for c in contents for s in styles]
    for c_name, s_name in tqdm(jobs, desc="eval photos", disable=not progress):
        content, style = contents[c_name][None], styles[s_name][None]
        for name, method in methods.items():
            pairs[name][f"{c_name}|{s_name}"] = score_pair(method(content, style), content, style)
    means = {
        name: {m: sum(p[m] for p in scores.values()) / len(scores) for m in METRICS}
        for name, scores in pairs.items()
    }
    return {
        "n_content": len(contents),
        "n_styles": len(styles),
        "size": min(min(t.shape[-2:]) for t in contents.values()),
        "methods": means,
        "pairs": pairs,
    }


def format_photo_table(report: dict) -> str:
    header = f"{'method':<14}" + "".join(f"{m + ' (' + METRICS[m][1][0] + ')':>14}" for m in METRICS)
    lines = [header]
    for name, s in report["methods"].items():
        lines.append(f"{name:<14}" + "".join(f"{s[m]:>14.3f}" for m in METRICS))
    lines.append(
        f"({report['n_content']} photos x {report['n_styles']} styles, shorter side {report['size']} px;"
        " h = higher is better, l = lower)"
    )
    return "\n".join(lines)


@torch.no_grad()
def write_photo_grid(
    methods: dict[str, Method],
    contents: dict[str, Tensor],
    styles: dict[str, Tensor],
    path: Path,
    cell: int = 192,
) -> Path:
    """One row per content photo, paired with the styles in turn: content | style | each method."""
    style_names = list(styles)
    cells = []
    for i, content in enumerate(contents.values()):
        style = styles[style_names[i % len(style_names)]]
        row = [content, style] + [m(content[None], style[None])[0].clamp(0, 1) for m in methods.values()]
        cells += [_square(t, cell) for t in row]
    path = Path(path)
    save_image(torch.stack(cells), path, nrow=2 + len(methods))
    return path


def _square(image: Tensor, size: int) -> Tensor:
    """Centre square crop resized to size x size: grid cells of equal shape."""
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[:, top : top + side, left : left + side]
    return torch.nn.functional.interpolate(crop[None].float(), size=(size, size), mode="area")[0]


def write_photo_report(report: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))

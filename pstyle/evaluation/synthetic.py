"""Evaluation harness: the model and the learning-free baselines, scored the same way.

For each user the style code comes from their training images and SWD is measured against
their held-out images, so a model cannot score well by copying what it was shown.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from pstyle.data.folders import ContentFolder, StyleUsers
from pstyle.models.style_model import StyleModel
from pstyle.quality.baselines import BASELINES
from pstyle.quality.metrics import code_consistency, content_distance, diversity, ssim, style_distance, swd
from pstyle.training.trainer import HOLDOUT_PER_USER

Method = Callable[[Tensor, Tensor], Tensor]  # (content (B,3,H,W), style set (K,3,H,W)) -> outputs
# Per method: SWD and feature-statistics style distance to held-out style images (lower is better),
# content SSIM (higher) and perceptual content distance (lower), the same measures as on photos.
SCORES = ("swd", "ssim", "style", "content")


def model_method(model: StyleModel, seed: int = 0) -> Method:
    return lambda content, styles: model.stylize(content, styles, seed=seed)


def evaluate(
    methods: dict[str, Method],
    data_dir: Path,
    image_size: int,
    n_users: int = 8,
    n_content: int = 8,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Mean of each of `SCORES` per method."""
    content, users = _load(Path(data_dir), image_size, n_content)
    return _score(methods, content, users, n_users, seed)


def _score(
    methods: dict[str, Method], content: Tensor, users: StyleUsers, n_users: int, seed: int
) -> dict[str, dict[str, float]]:
    scores: dict[str, dict[str, list[float]]] = {name: {m: [] for m in SCORES} for name in methods}
    for uid in users.user_ids[:n_users]:
        train, held = users.split(uid, holdout=HOLDOUT_PER_USER, seed=seed)
        for name, method in methods.items():
            out = method(content, train)
            scores[name]["swd"].append(swd(out, held, seed=seed)["mean"])
            scores[name]["ssim"].append(ssim(out, content).mean().item())
            scores[name]["style"].append(style_distance(out, held).mean().item())
            scores[name]["content"].append(content_distance(out, content).mean().item())
    return {name: {k: sum(v) / len(v) for k, v in s.items()} for name, s in scores.items()}


@torch.no_grad()
def model_extras(
    model: StyleModel, content: Tensor, users: StyleUsers, n_users: int = 8, seeds: int = 3
) -> dict[str, float]:
    """What only a generative model has: diversity across noise seeds and style-code consistency."""
    div, cons = [], []
    for uid in users.user_ids[:n_users]:
        train, _ = users.split(uid, holdout=HOLDOUT_PER_USER)
        outs = torch.stack([model.stylize(content, train, seed=s) for s in range(seeds)])
        div.append(diversity(outs))
        target = model.encoder(train).expand(len(content), -1)
        cons.append(code_consistency(model.encoder(outs[0].unsqueeze(1)), target))
    return {"diversity": sum(div) / len(div), "code_consistency": sum(cons) / len(cons)}


def evaluate_model(
    model: StyleModel, data_dir: Path, image_size: int, n_users: int = 8, n_content: int = 8
) -> dict:
    """The full report: model vs baselines, plus the model-only metrics."""
    model.eval()
    methods: dict[str, Method] = {"model": model_method(model), **BASELINES}
    content, users = _load(Path(data_dir), image_size, n_content)  # decoded once for both passes
    return {
        "image_size": image_size,
        "n_users": n_users,
        "n_content": n_content,
        "methods": _score(methods, content, users, n_users, seed=0),
        "model": model_extras(model, content, users, n_users),
    }


def format_table(report: dict) -> str:
    lines = [f"{'method':<12}{'SWD x1e3 (l)':>14}{'style (l)':>11}{'SSIM (h)':>10}{'content (l)':>13}"]
    for name, s in report["methods"].items():
        lines.append(f"{name:<12}{s['swd']:>14.2f}{s['style']:>11.3f}{s['ssim']:>10.3f}{s['content']:>13.3f}")
    extras = report.get("model", {})
    if extras:
        lines.append(
            f"model diversity {extras['diversity']:.4f}, code consistency {extras['code_consistency']:.3f}"
        )
    return "\n".join(lines)


def write_report(report: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


def _load(data_dir: Path, image_size: int, n_content: int) -> tuple[Tensor, StyleUsers]:
    folder = ContentFolder(data_dir / "content", image_size)
    content = torch.stack([folder[i]["image"] for i in range(min(n_content, len(folder)))])
    return content, StyleUsers(data_dir / "styles", image_size)

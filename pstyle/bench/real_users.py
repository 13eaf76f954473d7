"""`pstyle bench real-users`: personalization for users whose style sets are real images.

Four users (`pstyle.data.photos.real_style_users`: tiles of an illustration, a micrograph and two
photographs), each trained alone with the default `PersonalizeConfig` on content that mixes shipped
photo crops and procedural scenes. Reported per user: held-out feature-statistics style distance
and content SSIM of the base's zero-shot code vs the rank-8 adapter, on a content batch that early
stopping never saw; and the room there was, the held-out distance an output would score if it
rendered the user's training images' statistics exactly (`style_set_distance`). `grid` writes what
those numbers describe: per user, a held-out style image, then fresh photo crops as content | base |
adapter.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torchvision.utils import save_image

from pstyle.adapters.personalize import Personalizer
from pstyle.bench.common import machine_description
from pstyle.config import PersonalizeConfig, PStyleConfig
from pstyle.data.photos import photo_crops, real_style_users
from pstyle.data.synth import scene_tensors
from pstyle.quality.metrics import style_set_distance
from pstyle.training.checkpoint import load_checkpoint

GRID_PHOTOS = 3  # content photos per user in the grid


def bench_real_users(
    model_dir: Path, size: int = 128, steps: int | None = None, progress: bool = True,
    grid: Path | None = None,
) -> dict:  # fmt: skip
    base, meta = load_checkpoint(model_dir)
    config = PStyleConfig.from_dict(meta["config"])
    cfg = PersonalizeConfig() if steps is None else PersonalizeConfig(steps=steps)
    content = torch.cat([photo_crops(2 * cfg.batch_size, size), scene_tensors(2 * cfg.batch_size, size)])
    content = content[torch.randperm(len(content), generator=torch.Generator().manual_seed(0))]
    shown = photo_crops(GRID_PHOTOS, size, seed=1)  # other crops than the training batch's
    rows, cells = [], []
    for user, styles in real_style_users(size).items():
        start = time.perf_counter()
        personalizer = Personalizer(base, config, cfg, user)
        result = personalizer.fit(content, styles, progress=progress)
        cells.append(personalizer.held[user][:1])
        zero_shot = personalizer.stylize(shown, user, adapter=False)
        adapted = personalizer.stylize(shown, user, adapter=True)
        cells += [torch.stack(triple) for triple in zip(shown, zero_shot, adapted, strict=True)]
        before, after = result["before"], result["after"]
        rows.append({
            "user": user,
            "style_base": before["style"],
            "style_adapter": after["style"],
            "style_change": after["style"] / before["style"] - 1,
            "style_bound": style_set_distance(personalizer.train[user], personalizer.held[user]),
            "ssim_base": before["ssim"],
            "ssim_adapter": after["ssim"],
            "best_step": result["best_step"],
            "seconds": time.perf_counter() - start,
        })  # fmt: skip
    if grid is not None:
        save_image(torch.cat(cells), grid, nrow=1 + 3 * GRID_PHOTOS)
    return {"benchmark": "real-users", "machine": machine_description(torch.device("cpu")), "size": size,
            "steps": cfg.steps, "rows": rows}  # fmt: skip


def real_users_table(result: dict) -> str:
    lines = [
        f"{'user':<20}{'style base':>11}{'adapter':>9}{'change':>9}{'bound':>9}"
        f"{'SSIM base':>11}{'adapter':>9}{'best':>6}"
    ]
    for r in result["rows"]:
        change = f"{100 * r['style_change']:.1f}%"
        bound = f"{100 * (r['style_bound'] / r['style_base'] - 1):.0f}%"
        lines.append(
            f"{r['user']:<20}{r['style_base']:>11.3f}{r['style_adapter']:>9.3f}{change:>9}{bound:>9}"
            f"{r['ssim_base']:>11.3f}{r['ssim_adapter']:>9.3f}{r['best_step']:>6}"
        )
    return "\n".join(lines)

"""`pstyle bench real-users`: personalization for users whose style sets are real images.

Users whose style sets are real images (`pstyle.data.photos`: by default `real_style_users`, tiles
of an illustration, a micrograph and two photographs; or `wallpaper_style_users`, tiles of Debian
wallpapers drawn at random), each trained alone with the default `PersonalizeConfig` on content
that mixes shipped photo crops and procedural scenes. Reported per user: held-out feature-statistics
style distance and content SSIM of the base's zero-shot code vs the rank-8 adapter, on a content
batch that early stopping never saw; and the room there was, the held-out distance an output would
score if it rendered the user's training images' statistics exactly (`style_set_distance`). `grid` writes what
those numbers describe: per user, a held-out style image, then fresh photo crops as content | base |
adapter.

A user's split of style images into training and held-out ones, and every random draw of its training,
follow `PersonalizeConfig.seed`. With 2 of 8 images held out a split can decide a user's figure, so
`seeds` > 1 repeats the bench over that many splits and reports each user's mean change as well.

With `oracle_steps`, also the room under the SSIM cap (`room_under_ssim_cap`): how far optimising each
reported output by itself toward the training images moves the held-out distance while it keeps its
content SSIM, with a change per pixel and with one per 4x4 block.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import save_image
from tqdm import tqdm

from pstyle.adapters.personalize import Personalizer, selection_and_report
from pstyle.bench.common import machine_description
from pstyle.config import PersonalizeConfig, PStyleConfig
from pstyle.data.photos import photo_crops
from pstyle.data.synth import scene_tensors
from pstyle.quality.metrics import ssim, style_distance, style_gap, style_set_distance
from pstyle.training.checkpoint import load_checkpoint

GRID_PHOTOS = 3  # content photos per user in the grid
ORACLE_STRIDES = (1, 4)  # the room under the SSIM cap, changing each pixel or each 4x4 block
SSIM_CAP = 0.05  # the personalization target's content cost
STYLE_TARGET = 0.20  # and the held-out style distance it must take off the zero-shot code


def room_under_ssim_cap(
    zero_shot: Tensor, content: Tensor, train: Tensor, held: Tensor, stride: int, steps: int,
    lr: float = 0.03, penalty: float = PersonalizeConfig.ssim_penalty, progress: bool = False,
) -> tuple[dict[str, float], Tensor]:  # fmt: skip
    """Held-out style distance change and SSIM cost, and the outputs, when each zero-shot output is
    optimised on its own (Adam on its logits, changed per `stride` x `stride` block) toward the
    training images' feature statistics, paying `penalty` per unit of content SSIM lost beyond 90 %
    of `SSIM_CAP` (the adapters' budget wall, `PersonalizeConfig.ssim_penalty`).

    No renderer has to generalise here, so this measures the room per-image changes have at the
    target's SSIM cost (a local optimisation: a lower bound on it). Where it is far past the
    adapters, the cap is not what stops them.
    """
    base_ssim = ssim(zero_shot, content)
    logits = torch.logit(zero_shot.clamp(1e-3, 1 - 1e-3))
    side = zero_shot.shape[-2] // stride, zero_shot.shape[-1] // stride
    delta = zero_shot.new_zeros(*zero_shot.shape[:2], *side, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)

    def render() -> Tensor:
        up = F.interpolate(delta, size=zero_shot.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(logits + up)

    for _ in tqdm(range(steps), desc=f"room per {stride}x{stride}", disable=not progress):
        out = render()
        overspend = F.relu(base_ssim - 0.9 * SSIM_CAP - ssim(out, content))
        loss = style_gap(out, train).mean() + penalty * overspend.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = render()
        before = style_distance(zero_shot, held).mean().item()
        return {
            "change": style_distance(out, held).mean().item() / before - 1,
            "ssim_cost": (base_ssim - ssim(out, content)).mean().item(),
        }, out


def bench_real_users(
    model_dir: Path, users: dict[str, Tensor], size: int = 128, steps: int | None = None,
    progress: bool = True, grid: Path | None = None, oracle_steps: int = 0, seeds: int = 1,
) -> dict:  # fmt: skip
    base, meta = load_checkpoint(model_dir)
    config = PStyleConfig.from_dict(meta["config"])
    defaults = PersonalizeConfig()
    steps = defaults.steps if steps is None else steps
    content = torch.cat(
        [photo_crops(2 * defaults.batch_size, size), scene_tensors(2 * defaults.batch_size, size)]
    )
    content = content[torch.randperm(len(content), generator=torch.Generator().manual_seed(0))]
    shown = photo_crops(GRID_PHOTOS, size, seed=1)  # other crops than the training batch's
    rows, cells, room_cells = [], [], []
    for seed, (user, styles) in itertools.product(range(seeds), users.items()):
        cfg = replace(defaults, seed=seed, steps=steps)
        start = time.perf_counter()
        personalizer = Personalizer(base, config, cfg, user)
        result = personalizer.fit(content, styles, progress=progress)
        cells.append(personalizer.held[user][:1])
        zero_shot = personalizer.stylize(shown, user, adapter=False)
        adapted = personalizer.stylize(shown, user, adapter=True)
        cells += [torch.stack(triple) for triple in zip(shown, zero_shot, adapted, strict=True)]
        before, after = result["before"], result["after"]
        row = {
            "user": user,
            "seed": seed,
            "style_base": before["style"],
            "style_adapter": after["style"],
            "style_change": after["style"] / before["style"] - 1,
            "style_bound": style_set_distance(personalizer.train[user], personalizer.held[user]),
            "ssim_base": before["ssim"],
            "ssim_adapter": after["ssim"],
            "best_step": result["best_step"],
            "seconds": time.perf_counter() - start,
        }  # fmt: skip
        if oracle_steps:
            report = selection_and_report(content, cfg.batch_size)[1]
            reported = personalizer.stylize(report, user, adapter=False, seed=cfg.seed).clamp(0, 1)
            columns = [report, reported]
            for stride in ORACLE_STRIDES:
                row[f"room_stride{stride}"], optimised = room_under_ssim_cap(
                    reported, report, personalizer.train[user], personalizer.held[user], stride,
                    oracle_steps, penalty=cfg.ssim_penalty, progress=progress,
                )  # fmt: skip
                columns.append(optimised)
            for i in range(GRID_PHOTOS):
                room_cells += [personalizer.held[user][0], *(column[i] for column in columns)]
        rows.append(row)
    if grid is not None:
        save_image(torch.cat(cells), grid, nrow=1 + 3 * GRID_PHOTOS)
        if room_cells:  # rows of: a held-out style image | content | zero-shot | each room's output
            room_grid = grid.with_name(f"{grid.stem}-room{grid.suffix}")
            save_image(torch.stack(room_cells), room_grid, nrow=3 + len(ORACLE_STRIDES))
    return {"benchmark": "real-users", "machine": machine_description(torch.device("cpu")), "size": size,
            "steps": steps, "oracle_steps": oracle_steps, "seeds": seeds, "rows": rows}  # fmt: skip


def real_users_table(result: dict) -> str:
    rooms = [f"room_stride{stride}" for stride in ORACLE_STRIDES] if result.get("oracle_steps") else []
    lines = [
        f"{'user':<20}{'split':>6}{'style base':>11}{'adapter':>9}{'change':>9}{'bound':>9}"
        f"{'SSIM base':>11}{'adapter':>9}{'best':>6}" + "".join(f"{name:>22}" for name in rooms)
    ]
    for r in result["rows"]:
        change = f"{100 * r['style_change']:.1f}%"
        bound = f"{100 * (r['style_bound'] / r['style_base'] - 1):.0f}%"
        room = "".join(f"{_room_cell(r[name]):>22}" for name in rooms)
        lines.append(
            f"{r['user']:<20}{r['seed']:>6}{r['style_base']:>11.3f}{r['style_adapter']:>9.3f}{change:>9}"
            f"{bound:>9}{r['ssim_base']:>11.3f}{r['ssim_adapter']:>9.3f}{r['best_step']:>6}{room}"
        )
    return "\n".join(lines + _target_lines(result["rows"]))


def meets_target(row: dict) -> bool:
    """The personalization target: held-out style distance at least STYLE_TARGET lower than the
    zero-shot code's, for at most SSIM_CAP of content SSIM."""
    return row["style_change"] <= -STYLE_TARGET and row["ssim_base"] - row["ssim_adapter"] <= SSIM_CAP


def _target_lines(rows: list[dict]) -> list[str]:
    """Per split, the users that meet the target; with several splits, each user's mean change."""
    splits = sorted({r["seed"] for r in rows})
    lines = [""]
    for seed in splits:
        split = [r for r in rows if r["seed"] == seed]
        met = [r["user"] for r in split if meets_target(r)]
        lines.append(
            f"split {seed}: {len(met)} of {len(split)} users meet the target ({', '.join(met) or 'none'})"
        )
    if len(splits) > 1:
        for user in dict.fromkeys(r["user"] for r in rows):
            mine = [r for r in rows if r["user"] == user]
            change = sum(r["style_change"] for r in mine) / len(mine)
            cost = sum(r["ssim_base"] - r["ssim_adapter"] for r in mine) / len(mine)
            lines.append(f"{user}: mean over {len(mine)} splits {100 * change:.1f}% at SSIM cost {cost:.3f}")
    return lines


def _room_cell(room: dict[str, float]) -> str:
    return f"{100 * room['change']:.1f}% at {room['ssim_cost']:.3f}"

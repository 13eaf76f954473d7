"""Training the subject head (`models/subject_head.py`) on cutout composites (`data/cutouts.py`).

The loss is binary cross-entropy plus soft Dice: cross-entropy alone lets a head that predicts
"background" everywhere score well on small subjects. A held-out share of the cutouts, pasted on
the same backgrounds, gives an IoU for objects the head never saw.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from pstyle.config import SubjectTrainConfig
from pstyle.data.cutouts import Compositor, load_backgrounds, load_cutouts
from pstyle.models.subject_head import SubjectHead

VAL_COMPOSITES = 48


def mask_loss(logits: Tensor, truth: Tensor) -> Tensor:
    p = logits.sigmoid()
    overlap = 2 * (p * truth).sum(dim=(1, 2, 3)) + 1
    dice = 1 - overlap / (p.sum(dim=(1, 2, 3)) + truth.sum(dim=(1, 2, 3)) + 1)
    return F.binary_cross_entropy_with_logits(logits, truth) + dice.mean()


def mean_iou(logits: Tensor, truth: Tensor) -> float:
    predicted, truth = logits > 0, truth > 0.5
    union = (predicted | truth).sum(dim=(1, 2, 3)).clamp(min=1)
    return ((predicted & truth).sum(dim=(1, 2, 3)) / union).mean().item()


def train_subject_head(
    cfg: SubjectTrainConfig, out: Path, device: torch.device | str = "cpu", progress: bool = True
) -> dict[str, float]:
    """Train the decoder, write it to `out` (safetensors, atomically) and return held-out IoUs."""
    cutouts = load_cutouts(Path(cfg.cutouts))
    backgrounds = load_backgrounds([Path(f) for f in cfg.backgrounds.split(",") if f])
    random.Random(cfg.seed).shuffle(cutouts)
    n_val = max(1, round(cfg.holdout * len(cutouts)))
    if n_val >= len(cutouts):
        raise ValueError(f"{cfg.cutouts}: {len(cutouts)} cutouts are too few to hold {n_val} out")
    train = Compositor(cutouts[n_val:], backgrounds, cfg.size)
    val_images, val_masks = Compositor(cutouts[:n_val], backgrounds, cfg.size).batch(
        random.Random(cfg.seed + 1), VAL_COMPOSITES
    )
    torch.manual_seed(cfg.seed)
    model = SubjectHead().to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps))
    )
    rng = random.Random(cfg.seed)

    def held_out_iou() -> float:
        model.eval()
        with torch.no_grad():
            return mean_iou(model(val_images.to(device)), val_masks.to(device))

    before = held_out_iou()
    bar = tqdm(range(cfg.steps), desc="subject head", disable=not progress)
    for _ in bar:
        images, masks = train.batch(rng, cfg.batch)
        model.train()
        loss = mask_loss(model(images.to(device)), masks.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(model.decoder_state(), str(tmp))
    tmp.replace(out)
    return {
        "cutouts": len(cutouts),
        "backgrounds": len(backgrounds),
        "iou_before": before,
        "iou_after": held_out_iou(),
    }

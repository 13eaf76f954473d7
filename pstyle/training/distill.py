"""The short fine-tune after pruning: the pruned generator learns to reproduce the full one.

Matching the teacher's outputs (same content, code and noise) needs no labels and no discriminator,
and it recovers what the dropped channels carried rather than re-learning the style task from
scratch in a few hundred steps. Pixels alone (L1) teach the average colour but blur the texture,
so the loss adds the channel mean/std of the frozen trunk's features of both outputs (the style
loss's statistics), which is what the style distance of the evaluation measures.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from pstyle.models.generator import Generator
from pstyle.training.losses import feature_stats, style_loss


def distill(
    student: Generator,
    teacher: Generator,
    batches: Sequence[tuple[Tensor, Tensor]],
    steps: int,
    lr: float,
    seed: int = 0,
    progress: bool = True,
    style_weight: float = 1.0,
) -> list[float]:
    """Fine-tune `student`'s trainable weights for `steps` Adam steps over `batches` in turn; returns
    the per-step losses. The frozen trunk stays frozen; `teacher` is only read."""
    teacher.eval()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    student.train()
    for step in tqdm(range(steps), desc="distill", disable=not progress):
        content, codes = batches[step % len(batches)]
        noise = teacher.make_noise(content, seed=seed + step)
        with torch.no_grad():
            target = teacher(content, codes, noise)
            target_stats = [feature_stats(f) for f in teacher.trunk(target)]
        out = student(content, codes, noise)
        loss = F.l1_loss(out, target) + style_weight * style_loss(student.trunk(out), target_stats)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    student.eval()
    return losses

"""The short fine-tune after pruning: the pruned generator learns to reproduce the full one.

Matching the teacher's outputs (L1 in pixels, same content, code and noise) needs no labels and no
discriminator, and it recovers what the dropped channels carried rather than re-learning the style
task from scratch in a few hundred steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from pstyle.models.generator import Generator


def distill(
    student: Generator,
    teacher: Generator,
    batches: Sequence[tuple[Tensor, Tensor]],
    steps: int,
    lr: float,
    seed: int = 0,
    progress: bool = True,
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
        loss = F.l1_loss(student(content, codes, noise), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    student.eval()
    return losses

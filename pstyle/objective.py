"""The GAN objective in phases (StyleGAN2-ADA's split): G main, D main, D regularisation.

Each phase returns a scalar to backpropagate and a dict of floats to log; the trainer owns the
optimizers and decides when each phase runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pstyle import losses
from pstyle.config import LossConfig
from pstyle.model import StyleModel
from pstyle.models.features import FeatureExtractor


@dataclass
class Batch:
    """One training batch: each content image is paired with one user's style set."""

    content: Tensor  # (B, 3, S, S)
    styles: Tensor  # (B, K, 3, S, S): the style set the encoder pools
    real: Tensor  # (B, 3, S, S): a real image of the same style, for D
    masks: Tensor | None = None  # (B, 1, S, S) subject masks, when the data has them


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Temporarily stop gradients into a module's parameters (inputs still get gradients)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def generator_phase(
    model: StyleModel, features: FeatureExtractor, batch: Batch, weights: LossConfig
) -> tuple[Tensor, dict[str, float]]:
    """G main: adversarial + content + style + code consistency + diversity.

    Every content image is rendered with two noise draws, which the diversity term compares and
    the other terms both use (twice the samples for one extra generator pass).
    """
    b, k = batch.styles.shape[:2]
    codes = model.encoder(batch.styles)  # (B, D); the encoder learns through the generator
    content2, codes2 = batch.content.repeat(2, 1, 1, 1), codes.repeat(2, 1)
    noise = model.generator.make_noise(content2)
    fake = model.generator(content2, codes2, noise)  # (2B, 3, S, S)

    with torch.no_grad():
        style_grams = losses.style_set_grams(features(batch.styles.flatten(0, 1)), k)
        content_feats = [f.repeat(2, 1, 1, 1) for f in features(batch.content)]
    fake_feats = features(fake)
    with frozen(model.discriminator):
        adv = losses.g_hinge_loss(model.discriminator(fake, codes2.detach()))
    with frozen(model.encoder):  # else the encoder could satisfy the term by collapsing all codes
        code = losses.code_consistency_loss(model.encoder(fake.unsqueeze(1)), codes2)
    terms = {
        "adversarial": adv,
        "content": losses.content_loss(fake_feats, content_feats),
        "style": losses.style_loss(fake_feats, [g.repeat(2, 1, 1) for g in style_grams]),
        "code": code,
        "diversity": losses.diversity_loss(fake[:b], fake[b:], noise[:b], noise[b:]),
    }
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, {f"g_{name}": value.item() for name, value in terms.items()}


def discriminator_phase(
    model: StyleModel, batch: Batch, weights: LossConfig, regularize: bool
) -> tuple[Tensor, dict[str, float]]:
    """D main (hinge), plus lazy R1 on real images when `regularize` (every r1_every steps).

    The R1 term is scaled by r1_every so its average strength matches an every-step penalty.
    """
    with torch.no_grad():
        codes = model.encoder(batch.styles)
        fake = model.generator(batch.content, codes, model.generator.make_noise(batch.content))
    real = batch.real.detach().requires_grad_(regularize)
    real_logits = model.discriminator(real, codes)
    loss = losses.d_hinge_loss(real_logits, model.discriminator(fake, codes))
    logs = {"d_hinge": loss.item(), "d_real": real_logits.mean().item()}
    if regularize:
        r1 = losses.r1_penalty(real_logits, real)
        loss = loss + weights.r1_gamma / 2 * r1 * weights.r1_every
        logs["d_r1"] = r1.item()
    return loss, logs


def segmenter_phase(model: StyleModel, batch: Batch) -> tuple[Tensor, dict[str, float]]:
    """Subject segmentation on the synthetic scenes' ground-truth masks."""
    assert batch.masks is not None, "segmenter training needs masks"
    loss = losses.segmentation_loss(model.segmenter(batch.content), batch.masks)
    return loss, {"seg": loss.item()}

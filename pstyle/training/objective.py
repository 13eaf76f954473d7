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

from pstyle.config import LossConfig
from pstyle.models.encoder import codes_from_features, split_code
from pstyle.models.features import FeatureExtractor
from pstyle.models.style_model import StyleModel
from pstyle.training import losses


@dataclass
class Batch:
    """One training batch: each content image is paired with one user's style set."""

    content: Tensor  # (B, 3, S, S)
    styles: Tensor  # (B, K, 3, S, S): the style set the encoder pools
    real: Tensor  # (B, 3, S, S): a real image of the same style, for D
    masks: Tensor | None = None  # (B, 1, S, S) subject masks, when the data has them
    mask_valid: Tensor | None = None  # (B,) which samples' masks are real (photos have none); None: all
    codes: Tensor | None = None  # (B, D) the style sets' codes, filled in once by `style_codes`


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


def style_codes(model: StyleModel, batch: Batch) -> Tensor:
    """The batch's style codes, encoded once per step: the encoder is frozen, so both phases share them."""
    if batch.codes is None:
        with torch.no_grad():
            batch.codes = model.encoder(batch.styles)
    return batch.codes


def generator_phase(
    model: StyleModel, features: FeatureExtractor, batch: Batch, weights: LossConfig
) -> tuple[Tensor, dict[str, float]]:
    """G main: adversarial + content + style + code consistency + diversity + total variation.

    Every content image is rendered with two noise draws, which the diversity term compares and
    the other terms both use (twice the samples for one extra generator pass).
    """
    b, k = batch.styles.shape[:2]
    codes = style_codes(model, batch)
    content2, codes2 = batch.content.repeat(2, 1, 1, 1), codes.repeat(2, 1)
    noise = model.generator.make_noise(content2)
    fake = model.generator(content2, codes2, noise)  # (2B, 3, S, S)

    shared = features.shares_trunk_with_encoder
    with torch.no_grad():
        if shared:  # the code already holds the style set's pooled statistics on this very network
            style_stats = [(m.flatten(1), s.flatten(1)) for m, s in split_code(codes)]
        else:
            style_stats = losses.style_set_stats(features(batch.styles.flatten(0, 1)), k)
        content_feats = [f.repeat(2, 1, 1, 1) for f in features(batch.content)]
    fake_feats = features(fake)
    with frozen(model.discriminator):
        adv = losses.g_hinge_loss(model.discriminator(fake, codes2))
    fake_codes = codes_from_features(fake_feats, fake) if shared else model.encoder(fake.unsqueeze(1))
    code = losses.code_consistency_loss(fake_codes, codes2)
    terms = {
        "adversarial": adv,
        "content": losses.content_loss(fake_feats, content_feats),
        "structure": losses.structure_loss(fake_feats, content_feats),
        "style": losses.style_loss(fake_feats, [(m.repeat(2, 1), s.repeat(2, 1)) for m, s in style_stats]),
        "code": code,
        "diversity": losses.diversity_loss(fake[:b], fake[b:], noise[:b], noise[b:]),
        "tv": losses.total_variation(fake),
    }
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, {f"g_{name}": value.item() for name, value in terms.items()}


def discriminator_phase(
    model: StyleModel, batch: Batch, weights: LossConfig, regularize: bool
) -> tuple[Tensor, dict[str, float]]:
    """D main (hinge), plus lazy R1 on real images when `regularize` (every r1_every steps).

    The R1 term is scaled by r1_every so its average strength matches an every-step penalty.
    """
    codes = style_codes(model, batch)
    with torch.no_grad():
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
    if batch.masks is None:
        raise ValueError("segmenter training needs masks")
    content, masks = batch.content, batch.masks
    if batch.mask_valid is not None:
        content, masks = content[batch.mask_valid], masks[batch.mask_valid]
    if len(content) == 0:  # only photos this step: a zero loss that still gives every parameter a
        # (zero) gradient, so data-parallel ranks all-reduce the same tensors whatever they sampled
        return sum(p.sum() for p in model.segmenter.parameters()) * 0.0, {"seg": float("nan")}
    loss = losses.segmentation_loss(model.segmenter(content), masks)
    return loss, {"seg": loss.item()}

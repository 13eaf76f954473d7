"""Each loss term responds to what it is meant to measure."""

from __future__ import annotations

import torch

from pstyle import losses
from pstyle.config import FeatureConfig
from pstyle.models.features import FeatureExtractor, gram


def test_hinge_losses():
    assert losses.d_hinge_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)) == 0  # confident and right
    assert losses.d_hinge_loss(torch.zeros(4), torch.zeros(4)) == 2
    assert losses.g_hinge_loss(torch.full((4,), 3.0)) == -3


def test_r1_is_zero_for_constant_critic_and_positive_otherwise():
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    assert losses.r1_penalty((x * 0).sum(dim=(1, 2, 3)), x) == 0
    assert losses.r1_penalty((x * 2).sum(dim=(1, 2, 3)), x) > 0


def test_style_loss_zero_on_own_gram_order_free_and_sees_texture():
    feats = [torch.rand(6, 4, 8, 8), torch.rand(6, 8, 4, 4)]  # B=2 sets of K=3
    grams = losses.style_set_grams(feats, 3)
    assert grams[0].shape == (2, 4, 4)
    assert torch.allclose(grams[0][0], gram(feats[0][:3]).mean(0))
    shuffled = losses.style_set_grams([f[[2, 0, 1, 5, 3, 4]] for f in feats], 3)
    assert all(torch.allclose(a, b) for a, b in zip(grams, shuffled, strict=True))
    own = [f[:1].repeat(2, 1, 1, 1) for f in feats]
    assert (
        losses.style_loss(own, losses.style_set_grams([f[:1].repeat(6, 1, 1, 1) for f in feats], 3)) < 1e-12
    )
    # Same per-channel values, different texture: channel 1 copies channel 0 in the target, while
    # in the output channel 0 is spatially shuffled, breaking the correlation the Gram sees.
    target = [f[:1].clone() for f in feats]
    target[0][:, 1] = target[0][:, 0]
    out = [f.clone() for f in target]
    out[0][:, 0] = out[0][:, 0].flatten(1)[:, torch.randperm(64)].reshape(1, 8, 8)
    assert losses.style_loss(out, losses.style_set_grams(target, 1)) > 1e-4
    assert torch.allclose(gram(feats[0] + 5.0), gram(feats[0]), atol=1e-5)  # centred: offsets ignored


def test_content_loss_uses_layout():
    extractor = FeatureExtractor(FeatureConfig())
    img = torch.rand(1, 3, 32, 32)
    assert losses.content_loss(extractor(img), extractor(img)) == 0
    assert losses.content_loss(extractor(img.flip(-1)), extractor(img)) > 0


def test_diversity_loss_lower_when_outputs_differ():
    z_a, z_b = torch.zeros(2, 4), torch.ones(2, 4)
    img = torch.rand(2, 3, 8, 8)
    assert losses.diversity_loss(img, img + 0.5, z_a, z_b) < losses.diversity_loss(img, img + 0.01, z_a, z_b)
    assert losses.diversity_loss(img, img + 5.0, z_a, z_b) == -1.0  # capped: cannot dominate the objective


def test_code_consistency_and_segmentation():
    codes = torch.randn(3, 8)
    assert losses.code_consistency_loss(codes, codes).abs() < 1e-6
    assert losses.code_consistency_loss(-codes, codes) > 1.9
    masks = (torch.rand(2, 1, 8, 8) > 0.5).float()
    good = losses.segmentation_loss((masks * 2 - 1) * 10, masks)
    bad = losses.segmentation_loss(-(masks * 2 - 1) * 10, masks)
    assert good < 0.1 < bad

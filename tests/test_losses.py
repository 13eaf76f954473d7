"""Each loss term responds to what it is meant to measure."""

from __future__ import annotations

import torch

from pstyle.config import FeatureConfig
from pstyle.models.features import FeatureExtractor
from pstyle.training import losses


def test_hinge_losses():
    assert losses.d_hinge_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)) == 0  # confident and right
    assert losses.d_hinge_loss(torch.zeros(4), torch.zeros(4)) == 2
    assert losses.g_hinge_loss(torch.full((4,), 3.0)) == -3


def test_r1_is_zero_for_constant_critic_and_positive_otherwise():
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    assert losses.r1_penalty((x * 0).sum(dim=(1, 2, 3)), x) == 0
    assert losses.r1_penalty((x * 2).sum(dim=(1, 2, 3)), x) > 0


def test_style_loss_zero_on_own_statistics_order_free_and_sees_moments():
    feats = [torch.rand(6, 4, 8, 8), torch.rand(6, 8, 4, 4)]  # B=2 sets of K=3
    stats = losses.style_set_stats(feats, 3)
    assert stats[0][0].shape == (2, 4) and stats[0][1].shape == (2, 4)
    pooled = feats[0][:3].permute(1, 0, 2, 3).flatten(1)  # set 0, channels x all pixels of all images
    assert torch.allclose(stats[0][0][0], pooled.mean(dim=1), atol=1e-6)
    assert torch.allclose(stats[0][1][0] ** 2, pooled.var(dim=1, correction=0) + 1e-5, atol=1e-5)
    shuffled = losses.style_set_stats([f[[2, 0, 1, 5, 3, 4]] for f in feats], 3)
    assert all(
        torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
        for a, b in zip(stats, shuffled, strict=True)
    )
    own = [f[:1].repeat(2, 1, 1, 1) for f in feats]
    assert (
        losses.style_loss(own, losses.style_set_stats([f[:1].repeat(6, 1, 1, 1) for f in feats], 3)) < 1e-10
    )
    # A spatial shuffle keeps every channel's moments (style is texture statistics, not layout) ...
    target = losses.style_set_stats([f[:1] for f in feats], 1)
    shuffled_pixels = [
        f[:1].flatten(2)[:, :, torch.randperm(f.shape[2] * f.shape[3])].reshape_as(f[:1]) for f in feats
    ]
    assert losses.style_loss(shuffled_pixels, target) < 1e-10
    # ... while a change of contrast is a change of style.
    assert losses.style_loss([f[:1] * 2 for f in feats], target) > 1e-2


def test_total_variation_penalises_speckle_not_flat_images():
    flat = torch.full((1, 3, 16, 16), 0.4)
    assert losses.total_variation(flat) == 0
    assert losses.total_variation(torch.rand(1, 3, 16, 16)) > losses.total_variation(
        flat + 0.01 * torch.rand(1, 3, 16, 16)
    )


def test_content_loss_uses_layout_not_colour():
    extractor = FeatureExtractor(FeatureConfig())
    img = torch.rand(1, 3, 64, 64)
    img[..., 16:48, 16:48] *= 0.3  # a dark square: layout
    assert losses.content_loss(extractor(img), extractor(img)) == 0
    flipped = losses.content_loss(extractor(img.transpose(-1, -2).flip(-1)), extractor(img))
    tinted = losses.content_loss(
        extractor(img * torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)), extractor(img)
    )
    assert flipped > 2 * tinted > 0


def test_structure_loss_sees_fine_edges_that_the_content_loss_misses():
    """A one-pixel shift of a fine stripe pattern: faint at strides 8-16, plain at strides 2-4."""
    extractor = FeatureExtractor(FeatureConfig())
    stripes = (torch.arange(64) % 4 < 2).float().view(1, 1, 1, 64).expand(1, 3, 64, 64).clone()
    shifted = stripes.roll(1, dims=-1)
    content, out = extractor(stripes), extractor(shifted)
    assert losses.structure_loss(content, content) == 0
    tinted = extractor(stripes * torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1))
    assert losses.structure_loss(out, content) > 3 * losses.structure_loss(tinted, content)
    assert losses.structure_loss(out, content) > losses.content_loss(out, content)


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

"""Shapes, noise, strength and masks of the networks."""

from __future__ import annotations

import pytest
import torch

from pstyle.models.encoder import CODE_DIM, split_code
from pstyle.models.generator import feather
from pstyle.models.style_model import StyleModel


@pytest.fixture
def model(small_model_cfg) -> StyleModel:
    return StyleModel(small_model_cfg).eval()


def _randomize_film(model: StyleModel) -> None:
    """FiLM affines start at zero (the identity); give them, and the noise injection, weights that matter."""
    with torch.no_grad():
        for name, p in model.generator.named_parameters():
            if "affine" in name or "inject_noise" in name:
                p.normal_(0, 0.3)


@pytest.mark.parametrize("size", [64, 128, 256])
def test_generator_shapes_at_several_sizes(model, size):
    content = torch.rand(2, 3, size, size)
    code = model.encoder(torch.rand(2, 3, 3, 48, 48))
    out = model.generator(content, code, model.generator.make_noise(content, seed=0))
    assert out.shape == content.shape
    assert out.min() >= 0 and out.max() <= 1


def test_generator_non_square_and_rejects_bad_stride(model):
    code = torch.randn(1, CODE_DIM)
    content = torch.rand(1, 3, 64, 96)
    assert model.generator(content, code, model.generator.make_noise(content)).shape == (1, 3, 64, 96)
    with pytest.raises(ValueError, match="multiples of 16"):
        model.generator(torch.rand(1, 3, 56, 64), code, model.generator.make_noise(content))
    with pytest.raises(ValueError, match="noise"):
        model.generator(content, code, torch.randn(1, model.cfg.noise_dim, 8, 8))


@pytest.mark.parametrize("k", [1, 3, 7])
def test_encoder_any_set_size_and_image_size(model, k):
    assert model.encoder(torch.rand(k, 3, 40, 56)).shape == (1, CODE_DIM)
    assert model.encoder(torch.rand(2, k, 3, 32, 32)).shape == (2, CODE_DIM)


def test_encoder_rejects_bad_shapes_with_clear_errors(model):
    with pytest.raises(ValueError, match="at least 32 px"):
        model.encoder(torch.rand(2, 3, 16, 64))
    with pytest.raises(ValueError, match=r"\(B, K, 3, H, W\)"):
        model.encoder(torch.rand(2, 1, 32, 32))


def test_code_holds_the_style_statistics_adain_imposes(model):
    """The code is the pooled pretrained mean/log-std: a flat grey set has near-zero spread everywhere
    but the stem's, and a set's code equals the pooled statistics of its images' trunk features."""
    styles = torch.rand(3, 3, 64, 64)
    code = model.encoder(styles)
    feats = model.encoder.trunk(styles)
    mean, std = split_code(code)[2]
    f = feats[2]
    assert torch.allclose(mean.flatten(), f.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(std.flatten() ** 2, f.var(dim=(0, 2, 3), correction=0) + 1e-5, rtol=1e-3)


def test_trunk_is_frozen_and_stays_in_eval_mode(model):
    model.train()
    trunk = model.generator.trunk
    assert not trunk.training and not any(p.requires_grad for p in trunk.parameters())
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    model.generator(torch.rand(2, 3, 32, 32), torch.randn(2, CODE_DIM), torch.randn(2, 4, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in trunk.state_dict().items())  # BN stats untouched


def test_encoder_is_permutation_invariant(model):
    styles = torch.rand(5, 3, 48, 48)
    a = model.encoder(styles)
    b = model.encoder(styles[torch.tensor([3, 0, 4, 1, 2])])
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, model.encoder(torch.rand(5, 3, 48, 48)), atol=1e-3)


def test_noise_changes_output_and_seed_reproduces_it(model):
    _randomize_film(model)
    content, styles = torch.rand(2, 3, 64, 64), torch.rand(3, 3, 64, 64)
    a = model.stylize(content, styles, seed=1)
    b = model.stylize(content, styles, seed=1)
    c = model.stylize(content, styles, seed=2)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-3


def test_strength_zero_is_content_and_strength_interpolates(model):
    _randomize_film(model)
    content, styles = torch.rand(2, 3, 64, 64), torch.rand(3, 3, 64, 64)
    assert torch.allclose(model.stylize(content, styles, strength=0.0), content, atol=1e-6)
    full = model.stylize(content, styles, strength=1.0)
    half = model.stylize(content, styles, strength=0.5)
    assert torch.allclose(half, (content + full) / 2, atol=1e-5)


def test_mask_zero_leaves_content_unchanged_outside(model):
    _randomize_film(model)
    content, styles = torch.rand(1, 3, 64, 64), torch.rand(3, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    out = model.stylize(content, styles, mask=mask)
    outside = mask == 0
    assert torch.equal(
        out.masked_select(outside.expand_as(out)), content.masked_select(outside.expand_as(content))
    )
    center = (slice(None), slice(None), slice(28, 36), slice(28, 36))
    assert torch.allclose(out[center], model.stylize(content, styles)[center], atol=1e-6)
    assert torch.equal(model.stylize(content, styles, mask=torch.zeros(1, 1, 64, 64)), content)


def test_feather_is_smooth_inside_and_zero_outside():
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    soft = feather(mask, (32, 32), 5)
    assert soft[mask == 0].abs().max() == 0
    assert soft[0, 0, 16, 16] == 1
    edge = soft[0, 0, 16, 8:13]
    assert torch.all(edge[1:] >= edge[:-1]) and 0 < edge[1] < 1  # a ramp, not a step


def test_discriminator_is_conditional_patch_logits(model):
    images = torch.rand(2, 3, 64, 64)
    a = model.discriminator(images, torch.randn(2, CODE_DIM))
    b = model.discriminator(images, torch.randn(2, CODE_DIM))
    assert a.shape == (2, 1, 8, 8)
    assert not torch.allclose(a, b)


def test_segmenter_logits_and_binary_mask(model):
    images = torch.rand(2, 3, 64, 64)
    assert model.segmenter(images).shape == (2, 1, 64, 64)
    mask = model.subject_mask(images)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}

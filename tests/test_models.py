"""Shapes, noise, strength and masks of the networks."""

from __future__ import annotations

import math

import pytest
import torch

from pstyle.models.colour import chroma_code, impose_chroma, luma, to_luma_chroma
from pstyle.models.encoder import CODE_DIM, colour_part, split_code
from pstyle.models.generator import cat_channels, feather
from pstyle.models.layers import spatial_stats
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


def test_code_ends_with_the_style_sets_pooled_chroma(model):
    """A grey set's chroma is zero with the floor's spread; a tinted one's mean is its tint."""
    grey = torch.rand(2, 1, 48, 48).expand(2, 3, 48, 48)
    code = colour_part(model.encoder(grey))[0]
    assert code[:2].abs().max() < 1e-6 and torch.allclose(code[2:], torch.tensor(0.5 * math.log(1e-5)))
    tinted = torch.stack([torch.full((48, 48), v) for v in (0.8, 0.5, 0.2)])[None]  # orange
    _, chroma = to_luma_chroma(tinted)
    mean = colour_part(model.encoder(tinted))[0, :2]
    assert torch.allclose(mean, chroma.mean(dim=(0, 2, 3)), atol=1e-5) and mean[0] < 0 < mean[1]
    assert torch.equal(chroma_code(tinted[None]), colour_part(model.encoder(tinted)))


def test_imposed_chroma_has_the_codes_statistics_and_keeps_luma():
    gen = torch.Generator().manual_seed(0)
    images = 0.25 + 0.5 * torch.rand(2, 3, 32, 32, generator=gen)  # in gamut after a mild shift
    target = torch.tensor([[0.02, -0.03, math.log(0.05), math.log(0.04)]]).expand(2, -1)
    out = impose_chroma(images, target)
    _, chroma = to_luma_chroma(out)
    assert torch.allclose(chroma.mean(dim=(2, 3)), target[:, :2], atol=1e-4)
    assert torch.allclose(chroma.std(dim=(2, 3), correction=0), target[:, 2:].exp(), rtol=0.03)
    assert torch.allclose(luma(out), luma(images), atol=1e-5)
    floor = 0.5 * math.log(1e-5)  # the log-std of a grey set's chroma
    grey = impose_chroma(images, torch.tensor([[0.0, 0.0, floor, floor]]))
    assert to_luma_chroma(grey)[1].abs().max() < 0.02  # a grey style leaves (almost) no colour


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


def test_cat_channels_is_torch_cat_in_either_layout():
    """The int8 convolutions return channels_last maps: the luma is joined to them in that layout."""
    gen = torch.Generator().manual_seed(0)
    x, extra = torch.rand(2, 5, 8, 8, generator=gen), torch.rand(2, 1, 8, 8, generator=gen)
    expected = torch.cat([x, extra], dim=1)
    plain = cat_channels(x, extra)
    last = cat_channels(x.contiguous(memory_format=torch.channels_last), extra)
    assert torch.equal(plain, expected) and plain.is_contiguous()
    assert torch.equal(last, expected) and last.is_contiguous(memory_format=torch.channels_last)


def test_spatial_stats_match_torch_var_in_either_layout():
    """The two-pass statistics are torch's mean and var (either correction), and the centred map is
    x minus that mean, whatever the memory layout; an offset far above the spread does not cancel."""
    gen = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(2, 5, 17, 23, generator=gen, dtype=torch.float64) + 100
    for layout in (torch.contiguous_format, torch.channels_last):
        for correction in (0, 1):
            centered, mean, var = spatial_stats(x.float().contiguous(memory_format=layout), correction)
            want_var, want_mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=correction)
            assert mean.shape == var.shape == (2, 5, 1, 1)
            torch.testing.assert_close(mean.double(), want_mean, rtol=1e-6, atol=0)
            torch.testing.assert_close(var.double(), want_var, rtol=1e-5, atol=0)
            torch.testing.assert_close(centered.double(), x - want_mean, rtol=0, atol=1e-4)

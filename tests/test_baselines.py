import torch

from pstyle.quality.baselines import BASELINES, identity, lab_to_rgb, reinhard, rgb_to_lab


def _smooth_colours(n: int, size: int, lo: float, hi: float, seed: int) -> torch.Tensor:
    """Smooth, in-gamut colour fields so colour transfer is not distorted by clamping."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 8, size // 8, generator=gen)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return lo + (hi - lo) * x


def test_lab_round_trip_and_reference_values():
    rgb = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert (lab_to_rgb(rgb_to_lab(rgb)) - rgb).abs().max() < 1e-4
    ref = torch.tensor([[1.0, 1, 1], [0, 0, 0], [1, 0, 0]])[:, :, None, None]  # white, black, red
    lab = rgb_to_lab(ref)[:, :, 0, 0]
    expected = torch.tensor([[100.0, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20]])
    assert torch.allclose(lab, expected, atol=0.02), lab


def test_lab_gradients_finite_at_gamut_edges():
    rgb = torch.tensor([0.0, 0.5, 1.0]).expand(1, 3, 3).reshape(1, 3, 1, 3).clone().requires_grad_(True)
    rgb_to_lab(rgb).sum().backward()
    assert torch.isfinite(rgb.grad).all()


def test_identity_returns_content():
    content = torch.rand(2, 3, 8, 8)
    assert torch.equal(identity(content, torch.rand(4, 3, 16, 16)), content)
    assert BASELINES["identity"] is identity and BASELINES["reinhard"] is reinhard


def test_reinhard_matches_pooled_style_statistics():
    content = _smooth_colours(2, 32, 0.3, 0.7, seed=0)
    styles = _smooth_colours(3, 48, 0.35, 0.6, seed=1) * torch.tensor([1.0, 0.8, 0.6])[:, None, None]
    out = reinhard(content, styles)
    assert out.shape == content.shape and out.dtype == content.dtype
    assert out.min() > 0 and out.max() < 1  # in gamut: the final clamp did nothing
    style_lab = rgb_to_lab(styles)
    mu_s, std_s = style_lab.mean(dim=(0, 2, 3)), style_lab.std(dim=(0, 2, 3), correction=0)
    out_lab = rgb_to_lab(out)
    for i in range(len(out)):
        assert torch.allclose(out_lab[i].mean(dim=(1, 2)), mu_s, atol=1e-2)
        assert torch.allclose(out_lab[i].std(dim=(1, 2), correction=0), std_s, atol=1e-2)
    # The transfer actually moved the content's statistics.
    assert (rgb_to_lab(content)[0].mean(dim=(1, 2)) - mu_s).abs().max() > 5

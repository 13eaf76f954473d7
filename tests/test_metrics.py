import math

import pytest
import torch
import torch.nn.functional as F

from pstyle.models.colour import luma
from pstyle.quality.metrics import (
    code_consistency,
    diversity,
    laplacian_pyramid,
    pyr_up,
    ssim,
    style_distance,
    style_set_distance,
    swd,
)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = math.ceil(3 * sigma)
    g = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    g = (g / g.sum()).expand(3, 1, 1, 2 * r + 1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), g, groups=3)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), g.transpose(2, 3), groups=3)


def blobs(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth coloured noise: one texture family."""
    gen = torch.Generator().manual_seed(seed)
    x = _gaussian_blur(torch.rand(n, 3, size, size, generator=gen), 2.0)
    lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    return 0.2 + 0.6 * (x - lo) / (hi - lo)


def stripes(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Near-horizontal sinusoidal stripes with random phase: a second texture family."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    angle = math.pi / 2 + 0.2 * torch.rand(n, 1, 1, 1, generator=gen)
    freq = 0.5 + 0.1 * torch.rand(n, 1, 1, 1, generator=gen)
    phase = torch.rand(n, 1, 1, 1, generator=gen) * 2 * math.pi
    wave = torch.sin(freq * (xx * torch.cos(angle) + yy * torch.sin(angle)) + phase)
    amplitude = torch.tensor([0.3, 0.2, 0.1])[:, None, None]
    return (0.5 + amplitude * wave + 0.02 * torch.randn(n, 3, size, size, generator=gen)).clamp(0, 1)


def _noisy(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)


# ----------------------------------------------------------------------------- pyramid


def _reconstruct(levels: list[torch.Tensor]) -> torch.Tensor:
    x = levels[-1]
    for lvl in reversed(levels[:-1]):
        x = lvl + pyr_up(x, tuple(lvl.shape[-2:]))
    return x


def test_pyramid_levels_and_exact_reconstruction():
    x = blobs(2, 64)
    levels = laplacian_pyramid(x, min_res=16)
    assert [tuple(lvl.shape[-2:]) for lvl in levels] == [(64, 64), (32, 32), (16, 16)]
    assert (_reconstruct(levels) - x).abs().max() < 1e-5
    # Band-pass levels are zero-mean-ish; the residual keeps the brightness.
    assert levels[0].mean().abs() < 0.01 and (levels[-1].mean() - x.mean()).abs() < 0.01


def test_pyramid_odd_non_square_reconstruction():
    x = torch.rand(1, 3, 45, 37, generator=torch.Generator().manual_seed(0))
    levels = laplacian_pyramid(x, min_res=8)
    assert [tuple(lvl.shape[-2:]) for lvl in levels] == [(45, 37), (23, 19), (12, 10)]
    assert (_reconstruct(levels) - x).abs().max() < 1e-5


# ----------------------------------------------------------------------------- SWD


def test_swd_self_is_zero():
    x = blobs(4)
    out = swd(x, x)
    assert len(out["levels"]) == 3
    assert out["mean"] < 1e-6 * 1e3
    assert all(v < 1e-3 for v in out["levels"])


def test_swd_increases_with_noise():
    x = blobs(4)
    d = [swd(x, _noisy(x, s))["mean"] for s in (0.05, 0.1, 0.2)]
    assert d[0] > 1.0 and d[0] < d[1] < d[2], d


def test_swd_increases_with_blur():
    x = stripes(4)
    d = [swd(x, _gaussian_blur(x, s))["mean"] for s in (0.5, 1.0, 2.0)]
    assert d[0] < d[1] < d[2], d


def test_swd_between_families_exceeds_within_family():
    within = max(
        swd(blobs(4, seed=0), blobs(4, seed=1))["mean"], swd(stripes(4, seed=0), stripes(4, seed=1))["mean"]
    )
    across = swd(blobs(4, seed=0), stripes(4, seed=1))["mean"]
    assert across > 2 * within, (within, across)


def test_swd_deterministic_and_seeded():
    a, b = blobs(2, size=32, seed=0), stripes(2, size=32, seed=1)
    assert swd(a, b, seed=7) == swd(a, b, seed=7)
    assert swd(a, b, seed=7)["mean"] != swd(a, b, seed=8)["mean"]


def test_swd_different_counts_and_sizes():
    a, b = blobs(3, size=64), blobs(5, size=32, seed=1)
    out = swd(a, b)
    assert len(out["levels"]) == 2  # 32 px gives levels 32, 16; matched with a's first two
    assert math.isfinite(out["mean"]) and out["mean"] > 0
    assert abs(out["mean"] - sum(out["levels"]) / 2) < 1e-9


# ----------------------------------------------------------------------------- SSIM


def test_ssim_identity_noise_symmetry_range():
    x = blobs(3)
    assert (ssim(x, x) - 1).abs().max() < 1e-6
    s = [ssim(x, _noisy(x, sigma)).mean().item() for sigma in (0.02, 0.05, 0.1, 0.2)]
    assert 1 > s[0] > s[1] > s[2] > s[3], s
    y = stripes(3)
    assert torch.allclose(ssim(x, y), ssim(y, x), atol=1e-6)
    inv = ssim(x, 1 - x)
    assert (inv >= -1).all() and (inv < 0).all()  # anti-correlated structure scores negative


def test_ssim_matches_manual_single_window():
    gen = torch.Generator().manual_seed(3)
    x, y = torch.rand(1, 3, 11, 11, generator=gen), torch.rand(1, 3, 11, 11, generator=gen)
    lx, ly = luma(x)[0, 0].tolist(), luma(y)[0, 0].tolist()
    w = [[math.exp(-((i - 5) ** 2 + (j - 5) ** 2) / (2 * 1.5**2)) for j in range(11)] for i in range(11)]
    total = sum(map(sum, w))

    def wmean(f):
        return sum(w[i][j] * f(i, j) for i in range(11) for j in range(11)) / total

    mx, my = wmean(lambda i, j: lx[i][j]), wmean(lambda i, j: ly[i][j])
    vx = wmean(lambda i, j: (lx[i][j] - mx) ** 2)
    vy = wmean(lambda i, j: (ly[i][j] - my) ** 2)
    cxy = wmean(lambda i, j: (lx[i][j] - mx) * (ly[i][j] - my))
    c1, c2 = 0.01**2, 0.03**2
    ref = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    got = ssim(x, y)
    assert got.shape == (1,)
    assert abs(got.item() - ref) < 1e-5, (got.item(), ref)
    # data_range enters only through c1, c2: a larger range must change the score.
    assert abs(ssim(x, y, data_range=255.0).item() - ref) > 1e-3


# ----------------------------------------------------------------------------- diversity, consistency


def test_diversity():
    x = blobs(2)
    assert diversity(x.expand(4, *x.shape)) == 0
    levels = torch.tensor([0.0, 0.5, 1.0])[:, None, None, None, None].expand(3, 2, 3, 8, 8)
    assert abs(diversity(levels) - 2 / 3) < 1e-6  # pairs differ by 0.5, 1.0, 0.5
    assert diversity(torch.stack([x, _noisy(x, 0.1)])) > 0


def test_code_consistency():
    c = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    assert abs(code_consistency(c, 3 * c) - 1) < 1e-6
    assert abs(code_consistency(-c, c) + 1) < 1e-6
    e = torch.eye(4)
    assert abs(code_consistency(e, e.roll(1, dims=1))) < 1e-6


# ----------------------------------------------------------------------------- style statistics


def test_style_set_distance_is_style_distance_for_a_set_of_one_and_zero_for_itself():
    one, family = blobs(1, seed=3), blobs(4, seed=4)
    # the same statistics reduced in another order: equal up to float rounding
    assert style_set_distance(one, family) == pytest.approx(style_distance(one, family).item(), rel=1e-6)
    assert style_set_distance(family, family) == 0.0


def test_style_set_distance_is_smaller_within_a_texture_family():
    train, held = blobs(4, seed=5), blobs(2, seed=6)
    assert style_set_distance(train, held) < 0.5 * style_set_distance(stripes(4, seed=5), held)

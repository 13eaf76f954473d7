"""Evaluation metrics. Pixel-space ones need no network; perceptual ones use the pretrained trunk
that ships as a package, so every number is reproducible offline.

- `swd`: sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018), how close the
  outputs' local texture statistics are to the target style's.
- `ssim`: structural similarity on luminance, how much content structure the output keeps.
- `content_distance`: LPIPS-like distance on pretrained features (SSIM alone rewards blur).
- `style_distance`: pretrained feature mean/std distance to the style set (AdaIN's style measure);
  `style_set_distance` the same between two sets.
- `color_distance`: sliced Wasserstein distance between Lab colour distributions.
- `diversity`, `code_consistency`: does noise change the output, and does the output carry the style code.
"""

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from pstyle.models.backbone import Trunk
from pstyle.models.colour import luma
from pstyle.models.layers import spatial_stats
from pstyle.quality.baselines import rgb_to_lab
from pstyle.quality.swd import PATCH, random_directions, random_patches, sliced_distance

# ----------------------------------------------------------------------------- Laplacian pyramid


def _binomial_blur(x: Tensor) -> Tensor:
    """5x5 binomial filter ([1,4,6,4,1]/16 outer product) with mirror padding, as cv2.pyrDown/pyrUp."""
    c = x.shape[1]
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=x.device, dtype=x.dtype) / 16
    kernel = torch.outer(k1, k1).expand(c, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=c)


def pyr_down(x: Tensor) -> Tensor:
    """Blur then drop every other pixel; an odd side of n gives ceil(n/2)."""
    return _binomial_blur(x)[..., ::2, ::2]


def pyr_up(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero-insert up to `size` then blur (x4 keeps the brightness); inverse shape of `pyr_down`."""
    up = x.new_zeros(*x.shape[:2], *size)
    up[..., ::2, ::2] = x
    return 4 * _binomial_blur(up)


def laplacian_pyramid(x: Tensor, min_res: int = 16) -> list[Tensor]:
    """Band-pass levels from full resolution down to `min_res` px; the last level is the Gaussian residual.

    Level count follows Karras et al.: halve min(H, W) while it stays >= min_res. The image is recovered
    exactly by `x = levels[-1]; for lvl in reversed(levels[:-1]): x = lvl + pyr_up(x, lvl.shape[-2:])`.
    """
    if min_res < 3:
        raise ValueError(f"min_res must be >= 3 (mirror padding of the 5x5 filter), got {min_res}")
    if min(x.shape[-2:]) < min_res:
        raise ValueError(f"image {tuple(x.shape[-2:])} is smaller than min_res={min_res}")
    n_levels, res = 1, min(x.shape[-2:])
    while res // 2 >= min_res:
        n_levels, res = n_levels + 1, res // 2
    levels = [x]
    for _ in range(n_levels - 1):
        coarse = pyr_down(levels[-1])
        levels[-1] = levels[-1] - pyr_up(coarse, tuple(levels[-1].shape[-2:]))
        levels.append(coarse)
    return levels


# ----------------------------------------------------------------------------- sliced Wasserstein distance


def _sliced_wasserstein(
    da: Tensor, db: Tensor, n_directions: int, n_repeats: int, gen: torch.Generator
) -> float:
    """Sliced Wasserstein-1 averaged over `n_repeats` draws of `n_directions` directions."""
    n = min(len(da), len(db))
    # Patches are stored image by image, so a random subset (not the first n) keeps every image represented.
    if len(da) > n:
        da = da[torch.randperm(len(da), generator=gen)[:n].to(da.device)]
    if len(db) > n:
        db = db[torch.randperm(len(db), generator=gen)[:n].to(db.device)]
    dists = [
        sliced_distance(da, db, random_directions(da.shape[1], n_directions, da, gen))
        for _ in range(n_repeats)
    ]
    return torch.stack(dists).mean().item()


@torch.no_grad()
def swd(
    a: Tensor,
    b: Tensor,
    seed: int = 0,
    patches_per_image: int = 128,
    n_directions: int = 128,
    n_repeats: int = 4,
    min_res: int = 16,
) -> dict:
    """Multi-scale sliced Wasserstein distance between two image sets, x1e3 (Karras et al. 2018).

    Each set keeps its own size; pyramid levels are matched by index (the smaller set's level count is used).
    Both sets draw patch positions from the same seed, so equal-shaped sets share positions and
    swd(x, x) is exactly 0 (common random numbers also make comparisons between models less noisy).
    Returns {"levels": [finest..coarsest], "mean": average of levels}.
    """
    if min_res < PATCH:
        raise ValueError(f"min_res must be >= {PATCH} to fit the patches, got {min_res}")
    pyr_a = laplacian_pyramid(a.float(), min_res)
    pyr_b = laplacian_pyramid(b.float(), min_res)
    gen_a = torch.Generator().manual_seed(seed)
    gen_b = torch.Generator().manual_seed(seed)
    gen_dirs = torch.Generator().manual_seed(seed + 1)
    levels = []
    for la, lb in zip(pyr_a, pyr_b, strict=False):
        da = random_patches(la, len(la) * patches_per_image, gen_a)
        db = random_patches(lb, len(lb) * patches_per_image, gen_b)
        levels.append(1e3 * _sliced_wasserstein(da, db, n_directions, n_repeats, gen_dirs))
    return {"levels": levels, "mean": sum(levels) / len(levels)}


# ----------------------------------------------------------------------------- SSIM


def _gaussian_window(size: int = 11, sigma: float = 1.5, device: torch.device | None = None) -> Tensor:
    t = torch.arange(size, device=device, dtype=torch.float32) - size // 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)[None, None]


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Mean SSIM per image (B,) on luminance (Wang et al. 2004: 11x11 Gaussian, sigma 1.5, k1 .01, k2 .03).

    'Valid' convolution, so no padded border biases the score; differentiable.
    """
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {tuple(x.shape)} vs {tuple(y.shape)}")
    x, y = luma(x.float()), luma(y.float())  # SSIM is a structure measure, colour is SWD's job
    win = _gaussian_window(device=x.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    var_x = F.conv2d(x * x, win) - mu_x * mu_x
    var_y = F.conv2d(y * y, win) - mu_y * mu_y
    cov = F.conv2d(x * y, win) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return s.mean(dim=(1, 2, 3))


# ----------------------------------------------------------------------------- diversity, code consistency


@torch.no_grad()
def diversity(outputs: Tensor) -> float:
    """Mean pairwise L1 between the S outputs (S,B,3,H,W) of each input under different noise seeds.

    0 means the generator ignores its noise (mode collapse). Pairs are looped so memory stays O(S*B*HW).
    """
    s = outputs.shape[0]
    if s < 2:
        raise ValueError(f"need at least two noise seeds per input, got {s}")
    outputs = outputs.float()
    total = sum((outputs[i] - outputs[j]).abs().mean() for i in range(s) for j in range(i + 1, s))
    return (total / (s * (s - 1) / 2)).item()


@torch.no_grad()
def code_consistency(codes_out: Tensor, codes_target: Tensor) -> float:
    """Mean cosine similarity between style codes re-encoded from the outputs and the target codes (B,D).

    1 means the output carries exactly the requested style; the encoder stays with the caller.
    """
    return F.cosine_similarity(codes_out.float(), codes_target.float(), dim=1).mean().item()


# ----------------------------------------------------------------------------- perceptual metrics


@functools.cache
def _trunk(device: str) -> Trunk:
    return Trunk().to(device)


def _features(images: Tensor) -> list[Tensor]:
    return _trunk(str(images.device))(images.float())


@torch.no_grad()
def content_distance(outputs: Tensor, content: Tensor) -> Tensor:
    """Per image (B,): LPIPS-like distance on the pretrained trunk at strides 4, 8 and 16.

    Each pixel's feature vector is unit-normalised over channels (as LPIPS does), so the distance
    measures what is where, not how strongly; squared differences are averaged over pixels and taps.
    """
    total = outputs.new_zeros(len(outputs), dtype=torch.float32)
    taps = list(zip(_features(outputs), _features(content), strict=True))[1:]
    for fo, fc in taps:
        diff = F.normalize(fo, dim=1) - F.normalize(fc, dim=1)
        total = total + diff.square().sum(dim=1).mean(dim=(1, 2))
    return total / len(taps)


def _pooled_stats(feats: Tensor) -> tuple[Tensor, Tensor]:
    """(K,C,H,W) -> channel mean and std (C,) over every pixel of every image: a set as one distribution."""
    mean = feats.mean(dim=(0, 2, 3))
    return mean, (feats - mean[None, :, None, None]).square().mean(dim=(0, 2, 3)).sqrt()


def _stats_gap(mean_a: Tensor, std_a: Tensor, mean_b: Tensor, std_b: Tensor) -> Tensor:
    """RMS difference of channel means plus that of channel standard deviations (over the last dim)."""
    return (mean_a - mean_b).square().mean(dim=-1).sqrt() + (std_a - std_b).square().mean(dim=-1).sqrt()


@torch.no_grad()
def style_distance(outputs: Tensor, styles: Tensor) -> Tensor:
    """Per image (B,): distance of each output's pretrained feature mean/std to the style set's.

    The set (K,3,H,W) is one distribution: its statistics pool every pixel of every image. Per tap,
    the RMS difference of channel means plus that of channel standard deviations, averaged over taps.
    """
    return style_gap(outputs, styles)


def style_gap(outputs: Tensor, styles: Tensor) -> Tensor:
    """`style_distance` with gradients, for what optimises the metric itself (the benches' bounds)."""
    total = outputs.new_zeros(len(outputs), dtype=torch.float32)
    feats_o, feats_s = _features(outputs), _features(styles)
    for fo, fs in zip(feats_o, feats_s, strict=True):
        _, mean_o, var_o = spatial_stats(fo)
        total = total + _stats_gap(mean_o.flatten(1), var_o.sqrt().flatten(1), *_pooled_stats(fs))
    return total / len(feats_o)


@torch.no_grad()
def style_set_distance(images: Tensor, styles: Tensor) -> float:
    """`style_distance` of an output whose statistics were exactly those of the set `images`.

    With a user's training style images as `images` and their held-out ones as `styles`, this is
    what perfectly rendering the training statistics would score on the held-out set: how much
    room a personalization has, whatever its method.
    """
    pairs = zip(_features(images), _features(styles), strict=True)
    gaps = [_stats_gap(*_pooled_stats(fi), *_pooled_stats(fs)) for fi, fs in pairs]
    return (sum(gaps) / len(gaps)).item()


@torch.no_grad()
def color_distance(outputs: Tensor, styles: Tensor, seed: int = 0, n_pixels: int = 4096) -> Tensor:
    """Per image (B,): sliced Wasserstein-1 between the output's and the style set's Lab pixel colours.

    Whole colour distributions, not only their mean and spread (which Reinhard matches by design).
    """
    gen = torch.Generator().manual_seed(seed)
    lab_s = rgb_to_lab(styles.float()).permute(1, 0, 2, 3).reshape(3, -1)
    lab_o = rgb_to_lab(outputs.float()).flatten(2)  # (B, 3, HW)
    pick_s = torch.randint(lab_s.shape[1], (n_pixels,), generator=gen).to(lab_s.device)
    pick_o = torch.randint(lab_o.shape[2], (n_pixels,), generator=gen).to(lab_o.device)
    dirs = random_directions(3, 64, lab_s, gen)
    style_colours = lab_s[:, pick_s].T  # (n, 3)
    return torch.stack(
        [sliced_distance(out, style_colours, dirs) for out in lab_o[:, :, pick_o].transpose(1, 2)]
    )

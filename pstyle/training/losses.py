"""Loss functions, one per idea. Each says why it exists; the training step only weighs and sums them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pstyle.models.encoder import pooled_stats
from pstyle.models.layers import spatial_stats
from pstyle.quality.swd import random_directions, sliced_distance


def d_hinge_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Hinge loss for D: only patches on the wrong side of the margin give gradient (SNGAN)."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def g_hinge_loss(fake_logits: Tensor) -> Tensor:
    """Hinge loss for G: raise D's score of generated images for their claimed style."""
    return -fake_logits.mean()


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """R1 (Mescheder et al.): squared gradient norm of D on real data keeps D smooth there.

    `real_images` must have requires_grad set before D was evaluated on them.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3)).mean()


def content_loss(out_feats: list[Tensor], content_feats: list[Tensor]) -> Tensor:
    """The two deepest feature maps must keep the content's layout: objects and where they are."""
    return layout_distance(out_feats[-2:], content_feats[-2:])


def structure_loss(out_feats: list[Tensor], content_feats: list[Tensor]) -> Tensor:
    """The two shallowest feature maps (strides 2 and 4) must keep the content's edges and fine
    layout, where SSIM looks. Their channel statistics stay free, which is exactly what the style
    term sets: the AdaIN relation, enforced at fine scale."""
    return layout_distance(out_feats[:2], content_feats[:2])


def layout_distance(out_feats: list[Tensor], content_feats: list[Tensor]) -> Tensor:
    """Mean over taps of the MSE between instance-normalised maps: layout with the channel statistics
    (colour and texture, the style's job) taken out."""
    return sum(
        F.mse_loss(normalized(fo), normalized(fc)) for fo, fc in zip(out_feats, content_feats, strict=True)
    ) / len(out_feats)


def normalized(feat: Tensor) -> Tensor:
    """Zero mean and unit variance per channel and image: a feature map's layout without its style."""
    centered, _, var = spatial_stats(feat)
    return centered / (var + 1e-5).sqrt()


def feature_stats(feat: Tensor) -> tuple[Tensor, Tensor]:
    """(B,C,H,W) -> channel mean and standard deviation, (B,C) each."""
    _, mean, var = spatial_stats(feat)
    return mean.flatten(1), (var.flatten(1) + 1e-5).sqrt()


def style_loss(out_feats: list[Tensor], style_stats: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Channel mean and std at every scale must match the style set's (AdaIN's style loss).

    Gram matrices on a non-VGG network give noisy high-frequency textures (Wang et al., CVPR 2021);
    first and second moments per channel steer colour and texture energy without that failure.
    style_stats[i] is (mean, std), each (B, C): the style set's pooled statistics (`style_set_stats`).
    """
    total = out_feats[0].new_zeros(())
    for feat, (mean_s, std_s) in zip(out_feats, style_stats, strict=True):
        mean_o, std_o = feature_stats(feat)
        total = total + F.mse_loss(mean_o, mean_s) + F.mse_loss(std_o, std_s)
    return total / len(out_feats)


def style_set_stats(style_feats: list[Tensor], set_size: int) -> list[tuple[Tensor, Tensor]]:
    """Pooled channel mean/std per style set: features of B*K images -> B targets, order-free in K."""
    stats = []
    for f in style_feats:
        mean, log_std = pooled_stats(f.reshape(-1, set_size, *f.shape[1:])).chunk(2, dim=1)
        stats.append((mean, log_std.exp()))
    return stats


def total_variation(images: Tensor) -> Tensor:
    """Mean absolute difference of neighbouring pixels: damps checkerboard and speckle artifacts."""
    return (images[..., 1:, :] - images[..., :-1, :]).abs().mean() + (
        images[..., :, 1:] - images[..., :, :-1]
    ).abs().mean()


def sliced_wasserstein_loss(
    out_feats: list[Tensor],
    style_feats: list[Tensor],
    n_directions: int = 32,
    rng: torch.Generator | None = None,
) -> Tensor:
    """Sliced Wasserstein texture loss (Heitz et al. 2021): each output's feature vectors must have
    the same distribution as the pooled style images' along random 1-D projections.

    Matches whole distributions rather than second moments, so it keeps improving texture where
    a Gram loss is already satisfied. out_feats[i] is (B, C, H, W); style_feats[i] is (K, C, h, w),
    one style set shared by the batch (a user's images). Directions come from the CPU generator `rng`
    if given, else fresh from the device RNG.
    """
    total = out_feats[0].new_zeros(())
    for fo, fs in zip(out_feats, style_feats, strict=True):
        c = fo.shape[1]
        vectors_out = fo.flatten(2).transpose(1, 2)  # (B, N, C): each output's own distribution
        vectors_style = fs.flatten(2).transpose(1, 2).reshape(-1, c)  # (M, C): the pooled style set
        total = total + sliced_distance(
            vectors_out, vectors_style, random_directions(c, n_directions, fo, rng), power=2
        )
    return total / len(out_feats)


def code_consistency_loss(out_codes: Tensor, target_codes: Tensor) -> Tensor:
    """Re-encoding the output must give back its style code, so the output carries the style
    the encoder recognises rather than any texture that fools the Gram loss."""
    return (1 - F.cosine_similarity(out_codes, target_codes.detach(), dim=1)).mean()


def diversity_loss(
    out_a: Tensor, out_b: Tensor, noise_a: Tensor, noise_b: Tensor, cap: float = 1.0
) -> Tensor:
    """Mode seeking (Mao et al., MSGAN): different noise must give different images, else G
    collapses to one output per (content, style). Maximises the image/noise distance ratio,
    capped (as StarGAN v2's diversity term is bounded) so it cannot outweigh content and style."""
    ratio = (out_a - out_b).abs().mean(dim=(1, 2, 3)) / (noise_a - noise_b).abs().flatten(1).mean(dim=1)
    return -ratio.clamp(max=cap).mean()


def segmentation_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """BCE for per-pixel accuracy plus soft Dice so small subjects are not ignored."""
    prob = torch.sigmoid(logits)
    dice = 1 - (2 * (prob * masks).sum(dim=(1, 2, 3)) + 1) / (
        prob.sum(dim=(1, 2, 3)) + masks.sum(dim=(1, 2, 3)) + 1
    )
    return F.binary_cross_entropy_with_logits(logits, masks) + dice.mean()

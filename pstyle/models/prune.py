"""Structured channel pruning of the generator's decoder, by measured importance.

The decoder's widths all follow one number (`ModelConfig.channels`: c at 1/2 resolution, 2c at 1/4
and 1/8, 4c at 1/16, c/2 at full resolution), so a pruned generator is an ordinary `Generator`
with a smaller `channels`: it loads, serves and takes adapters like any base. Which channels
survive is measured, not read off weight norms: FiLM rescales every channel per style, so a small
filter can still carry a large activation. Importance is a channel's mean absolute activation over
calibration batches of real and procedural content in many styles. Channels that meet in one tensor
(the 1/16 residual stream; the noise injection and the conv it is added to) are kept as one set.
The frozen pretrained trunk and the mapping network are copied whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from pstyle.config import ModelConfig
from pstyle.models.generator import Generator
from pstyle.models.layers import ModulatedConv

_STREAM = "stream"  # the 1/16 residual stream: the bottom conv and every block add into it


def _channel_groups(g: Generator) -> dict[str, list[nn.Module]]:
    """Each prunable channel set -> the modules whose (post-activation) outputs live in it."""
    groups: dict[str, list[nn.Module]] = {_STREAM: [g.bottom, *g.blocks]}
    for i, block in enumerate(g.blocks):
        groups[f"blocks.{i}.conv1"] = [block.conv1]
    for stage in ("up8", "up4", "up2"):
        groups[f"{stage}.conv1"] = [getattr(g, stage).conv1]
        groups[f"{stage}.conv2"] = [getattr(g, stage).conv2]
    groups["up1"] = [g.up1]
    return groups


@torch.no_grad()
def channel_importance(
    g: Generator, batches: Iterable[tuple[Tensor, Tensor]], seed: int = 0
) -> dict[str, Tensor]:
    """Mean |activation| per channel of every prunable set over (content, style code) batches."""
    groups = _channel_groups(g)
    sums = {name: torch.zeros(0) for name in groups}
    hooks = []
    for name, modules in groups.items():
        for module in modules:

            def record(_m: nn.Module, _args: tuple, out: Tensor, name: str = name) -> None:
                mean = out.detach().abs().mean(dim=(0, 2, 3)).float().cpu()
                sums[name] = mean if sums[name].numel() == 0 else sums[name] + mean

            hooks.append(module.register_forward_hook(record))
    try:
        for i, (content, codes) in enumerate(batches):
            g(content, codes, g.make_noise(content, seed=seed + i))
    finally:
        for hook in hooks:
            hook.remove()
    if any(s.numel() == 0 for s in sums.values()):
        raise ValueError("channel_importance needs at least one calibration batch")
    return sums


@torch.no_grad()
def pruned_generator(
    g: Generator, cfg: ModelConfig, importance: dict[str, Tensor], channels: int
) -> tuple[Generator, ModelConfig]:
    """A new Generator of decoder width `channels` holding the kept channels' weights of `g` (built
    with `cfg`), and its config."""
    if not 2 <= channels <= cfg.channels:
        raise ValueError(f"pruned width must be in [2, {cfg.channels}], got {channels}")
    small_cfg = dataclasses.replace(cfg, channels=channels)
    small = Generator(small_cfg).to(next(g.parameters()).device)
    small.mapping.load_state_dict(g.mapping.state_dict())
    keep = {
        name: importance[name].topk(modules[0].conv.out_channels).indices.sort().values
        for name, modules in _channel_groups(small).items()
    }
    stream = keep[_STREAM]
    _copy_conv(small.bottom, g.bottom, slice(None), stream)
    for i, (dst, src) in enumerate(zip(small.blocks, g.blocks, strict=True)):
        hidden = keep[f"blocks.{i}.conv1"]
        _copy_conv(dst.conv1, src.conv1, stream, hidden)
        _copy_conv(dst.conv2, src.conv2, hidden, stream)
    previous, previous_width = stream, g.bottom.conv.out_channels
    for stage in ("up8", "up4", "up2"):
        dst, src = getattr(small, stage), getattr(g, stage)
        skip = torch.arange(previous_width, src.conv1.conv.in_channels)  # the trunk's tap, kept whole
        first, second = keep[f"{stage}.conv1"], keep[f"{stage}.conv2"]
        _copy_conv(dst.conv1, src.conv1, torch.cat([previous, skip]), first)
        _copy_conv(dst.conv2, src.conv2, first, second)
        if stage == "up4":  # the noise is added to conv1's output: same channels
            small.inject_noise.weight.copy_(g.inject_noise.weight[first])
            small.inject_noise.bias.copy_(g.inject_noise.bias[first])
        previous, previous_width = second, src.conv2.conv.out_channels
    luma = torch.tensor([previous_width])  # up1 sees the upsampled features plus the luminance
    _copy_conv(small.up1, g.up1, torch.cat([previous, luma]), keep["up1"])
    small.to_rgb.weight.copy_(g.to_rgb.weight[:, keep["up1"]])
    small.to_rgb.bias.copy_(g.to_rgb.bias)
    return small, small_cfg


def _copy_conv(dst: ModulatedConv, src: ModulatedConv, rows_in: Tensor | slice, rows_out: Tensor) -> None:
    """dst <- src restricted to input channels `rows_in` and output channels `rows_out` (conv and FiLM)."""
    dst.conv.weight.copy_(src.conv.weight[rows_out][:, rows_in])
    dst.conv.bias.copy_(src.conv.bias[rows_out])
    c_out = src.conv.out_channels
    film_rows = torch.cat([rows_out, rows_out + c_out])  # gamma rows, then beta rows
    dst.film.affine.weight.copy_(src.film.affine.weight[film_rows])
    dst.film.affine.bias.copy_(src.film.affine.bias[film_rows])

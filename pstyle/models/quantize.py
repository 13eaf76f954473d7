"""The int8 generator for CPU serving: every convolution runs as an x86 int8 kernel, the rest in float.

Weights are quantized per output channel (symmetric int8, 7 bits used: `WEIGHT_LEVELS`) when a layer
first runs, activations per tensor (affine uint8) with ranges calibrated on real photographs and
procedural scenes; a layer whose input channels span very different ranges is smoothed first
(`SMOOTHING_ALPHA`), so one per-tensor scale does not erase its faint channels. Inside the trunk's
blocks a convolution hands its output to the next one still quantized (`_CHAINS`). The float weights
stay in the module: the checkpoint, its fingerprint and therefore every user's adapter are the same
as the fp32 base's, and a LoRA wrapper around an `Int8Conv2d` adds its delta in float on top of the
int8 base output. A weight changed in place (an adapter merged into the base) is re-quantized before
the next forward, so merge-then-quantize needs no extra step.

Why eager quantized kernels rather than PT2E + Inductor (torch 2.13's recommended flow, in torchao):
PT2E only reaches int8 kernels through `torch.compile` with frozen weights. Frozen weights are
constants of the compiled graph, so a user's float adapter delta cannot be added without compiling
per user, and every new batch shape compiles again (about 25 s on 2 CPUs). Measured once by hand
(torchao 0.18, 256 px, 2 CPUs): PT2E int8 compiled 18 ms/image against 51 ms fp32 eager, for the
bare base only; `pstyle bench generator --variants` measures this module's int8. torch 2.13 marks
the quantized-tensor functions used here as deprecated (pytorch/pytorch#184982) and warns once per
process; the PT2E route with the adapter deltas as graph inputs is the way forward when they go.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pstyle.store.atomic import atomic_write

CALIBRATION_FILE = "int8.safetensors"  # per-layer activation ranges, next to the checkpoint's weights
# Weights use 7 bits (-63..63). x86 int8 kernels on CPUs without VNNI multiply u8 inputs by s8
# weights and add pairs in int16 (vpmaddubsw), which saturates once 2 * 255 * |w| > 32767: measured on
# an AVX2-only CPU with 8-bit weights, the stem's output was off by up to 6.0 at 1.5 % of its pixels.
# At 63 no pair can saturate, so every x86 CPU computes the exact integer result. Per-channel weight
# scales lose less to the dropped bit than the per-tensor inputs would (docs/benchmarks.md, "Serving
# variants"). Inputs and outputs keep 8 bits; the folded ReLU6 is the output's saturation at 255.
WEIGHT_LEVELS = 63
# SmoothQuant's migration strength (Xiao et al. 2023): input channel j is divided by
# s_j = max|x_j|^a / max|w_j|^(1-a) and its weights multiplied by it, the same product in float. One
# per-tensor input scale then fits channels of very different ranges: the last decoder layer takes
# 24 feature channels spanning about +-120 next to the photo's normalised luma (+-3), whose detail a
# shared 8-bit step of 0.9 erased (docs/benchmarks.md, "Serving variants").
SMOOTHING_ALPHA = 0.5
MIN_SHARE, MIN_LEVELS = 0.01, 32  # `_starved`: which layers need it
# timm's EfficientNet blocks, by class name: (their convolutions in the order data flows through them,
# the modules between those convolutions). Once the norms between are folded, every module between
# is an identity and each convolution's output is the next one's input, so it can stay quantized:
# the pair skips a dequantize and a quantize of the expanded map, the trunk's largest tensors.
_CHAINS = {
    "DepthwiseSeparableConv": (("conv_dw", "conv_pw"), ("bn1", "aa", "se")),
    "InvertedResidual": (("conv_pw", "conv_dw", "conv_pwl"), ("bn1", "bn2", "aa", "se")),
}


class QuantizationError(ValueError):
    """The int8 variant cannot be built or loaded here (device, ranges, missing layers)."""


class Int8Conv2d(nn.Conv2d):
    """A Conv2d that records its activation ranges while calibrating and then runs in int8.

    Subclassing Conv2d keeps every attribute a LoRA wrapper or a merge reads (weight, bias, stride,
    padding) and the layer's own state-dict keys. A BatchNorm that followed the convolution (the
    frozen trunk's) is folded into it with its ReLU/ReLU6: the int8 output's range starts at 0 and
    ends at most at 6, so requantizing the output is the activation, at no cost.
    """

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d | None = None) -> None:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise QuantizationError(f"int8 convolutions need numeric zero padding, got {conv}")
        super().__init__(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, device=conv.weight.device,
        )  # fmt: skip
        self.weight, self.bias = conv.weight, conv.bias
        scale, shift = _fold(norm, conv.out_channels)
        self.register_buffer("fold_scale", scale.to(conv.weight.device), persistent=False)
        self.register_buffer("fold_shift", shift.to(conv.weight.device), persistent=False)
        self.clamp = _fused_activation(norm)
        # Observed ranges, not in the state dict (the checkpoint is fp32's): per input channel lo/hi,
        # and the output's lo/hi. Both start at 0, so they include it.
        self.register_buffer("input_ranges", torch.zeros(2, conv.in_channels), persistent=False)
        self.register_buffer("output_range", torch.zeros(2), persistent=False)
        self.register_buffer("smoothing", torch.ones(conv.in_channels), persistent=False)
        self.calibrating = True
        self._packed: tuple[int, object] | None = None  # (weight version, prepacked int8 weight)
        # (parent, this layer's name, the next layer's name) when this layer's output is the next
        # one's input (`_CHAINS`); a plain tuple, so the parent is not registered as a submodule
        self._chain: tuple[nn.Module, str, str] | None = None

    def __getstate__(self) -> dict:
        """Copies drop the packed kernel weight (an opaque object); it is rebuilt on first use."""
        return {**self.__dict__, "_packed": None}

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight, self.bias)

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The convolution with `weight`: this layer's own (packed once), or a merged base-plus-adapter
        weight that a LoRA wrapper's grouped path passes (quantized for this call: merge-then-quantize)."""
        if self.calibrating:
            y = super()._conv_forward(x, *self.folded(weight, bias))
            y = y if self.clamp == (None, None) else y.clamp(*self.clamp)
            self._observe(x, y)
            return y
        packed = self._own_packed() if weight is self.weight else self._pack(weight, bias)
        if x.is_quantized:  # the previous layer of a chain kept it so: its output range is this input's
            qx = x
        else:
            x = x.float() / self.smoothing.view(1, -1, 1, 1) if self._smoothed else x.float()
            qx = torch.quantize_per_tensor(x, *self._input_q, torch.quint8)
        y = torch.ops.quantized.conv2d(qx, packed, *self._output_q)
        return y if self._feeds_int8() else y.dequantize()

    def _feeds_int8(self) -> bool:
        """Whether the output may stay quantized: the next layer of its chain is a plain, unsmoothed
        Int8Conv2d, and neither is wrapped by a LoRA adapter (whose float delta needs float tensors).
        Checked on every call, since an adapter may be injected after calibration."""
        if self._chain is None:
            return False
        parent, own, following = self._chain
        nxt = getattr(parent, following)
        return (
            getattr(parent, own) is self
            and type(nxt) is Int8Conv2d
            and not nxt.calibrating
            and not nxt._smoothed
        )

    def folded(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """`weight` and `bias` with the folded BatchNorm applied (as they are without one)."""
        weight = weight * self.fold_scale.view(-1, 1, 1, 1)
        shifted = self.fold_shift if bias is None else bias * self.fold_scale + self.fold_shift
        return weight, (None if bias is None and not self.fold_shift.any() else shifted)

    @torch.no_grad()
    def finish_calibration(self) -> None:
        """Fix the input smoothing and the recorded ranges as uint8 (scale, zero point) pairs, and run
        in int8 from now on."""
        weight = self.folded(self.weight, self.bias)[0].float()
        if self.groups == 1 and _starved(self.input_ranges, weight):
            x_max = self.input_ranges.abs().amax(dim=0).clamp_min(1e-5)
            w_max = weight.abs().amax(dim=(0, 2, 3)).clamp_min(1e-5)
            self.smoothing.copy_(x_max**SMOOTHING_ALPHA / w_max ** (1 - SMOOTHING_ALPHA))
        lo, hi = (self.input_ranges / self.smoothing).unbind(0)
        self._input_q = affine_params(lo.min().item(), hi.max().item())
        self._output_q = affine_params(*self.output_range.tolist())
        self._smoothed = bool((self.smoothing != 1).any())
        self.calibrating = False

    @torch.no_grad()
    def _observe(self, x: Tensor, y: Tensor) -> None:
        x = x.float().transpose(0, 1).flatten(1)
        self.input_ranges[0] = self.input_ranges[0].minimum(x.amin(dim=1).cpu())
        self.input_ranges[1] = self.input_ranges[1].maximum(x.amax(dim=1).cpu())
        self.output_range[0] = self.output_range[0].minimum(y.min().float().cpu())
        self.output_range[1] = self.output_range[1].maximum(y.max().float().cpu())

    def _own_packed(self) -> object:
        """This layer's packed int8 weight, re-packed after an in-place change (a merged adapter)."""
        version = self.weight._version
        if self._packed is None or self._packed[0] != version:
            self._packed = (version, self._pack(self.weight, self.bias))
        return self._packed[1]

    @torch.no_grad()
    def _pack(self, weight: Tensor, bias: Tensor | None) -> object:
        """Folded and smoothed, per-output-channel symmetric weight in -63..63, prepacked for the x86
        kernel."""
        weight, bias = self.folded(weight, bias)
        if self.groups == 1:  # a grouped weight's second dimension is not the input channels
            weight = weight * self.smoothing.view(1, -1, 1, 1)
        w = weight.detach().float().cpu()
        scales = (w.abs().amax(dim=(1, 2, 3)) / WEIGHT_LEVELS).clamp_min(1e-12).double()
        qw = torch.quantize_per_channel(w, scales, torch.zeros(len(w), dtype=torch.long), 0, torch.qint8)
        bias = None if bias is None else bias.detach().float().cpu()
        return torch.ops.quantized.conv2d_prepack(
            qw, bias, list(self.stride), list(self.padding), list(self.dilation), self.groups
        )


def _starved(input_ranges: Tensor, weight: Tensor) -> bool:
    """Whether one shared input scale would starve a channel that matters: one carrying at least
    `MIN_SHARE` of the layer's input magnitude (its range times its weights' norm) left with fewer
    than `MIN_LEVELS` of the 256 input levels. Such layers are smoothed; the others skip the division
    smoothing costs (the trunk's channels come out of BatchNorms, their ranges are even)."""
    lo, hi = input_ranges.unbind(0)
    share = (hi - lo) * weight.square().sum(dim=(0, 2, 3)).sqrt()
    levels = 255 * (hi - lo) / (hi.max() - lo.min()).clamp_min(1e-12)
    return bool(((share >= MIN_SHARE * share.sum()) & (levels < MIN_LEVELS)).any())


def _fold(norm: nn.BatchNorm2d | None, channels: int) -> tuple[Tensor, Tensor]:
    """Per-channel (scale, shift) of an eval-mode BatchNorm: y = x * scale + shift."""
    if norm is None:
        return torch.ones(channels), torch.zeros(channels)
    scale = norm.weight.detach() / (norm.running_var + norm.eps).sqrt()
    return scale.float(), (norm.bias.detach() - norm.running_mean * scale).float()


def _fused_activation(norm: nn.Module | None) -> tuple[float | None, float | None]:
    """The clamp bounds of the activation a folded norm carried (timm's BatchNormAct2d)."""
    act = getattr(norm, "act", None)
    if isinstance(act, nn.ReLU6):
        return 0.0, 6.0
    if isinstance(act, nn.ReLU):
        return 0.0, None
    return None, None


def _foldable(norm: nn.Module) -> bool:
    """A BatchNorm (with at most a ReLU/ReLU6 and no dropout) that int8 can fold into the conv before it."""
    act, drop = getattr(norm, "act", nn.Identity()), getattr(norm, "drop", nn.Identity())
    return (
        isinstance(norm, nn.BatchNorm2d)
        and norm.track_running_stats
        and isinstance(act, nn.Identity | nn.ReLU | nn.ReLU6)
        and isinstance(drop, nn.Identity)
    )


def affine_params(lo: float, hi: float) -> tuple[float, int]:
    """uint8 scale and zero point covering [lo, hi] (a range that always includes 0, as observed)."""
    scale = max((hi - lo) / 255.0, 1e-8)
    return scale, int(min(255, max(0, round(-lo / scale))))


def int8_layers(module: nn.Module) -> dict[str, Int8Conv2d]:
    return {name: m for name, m in module.named_modules() if isinstance(m, Int8Conv2d)}


def prepare_int8(generator: nn.Module) -> nn.Module:
    """Replace every Conv2d of `generator` (in place) by a calibrating Int8Conv2d; returns it.

    A BatchNorm registered right after a conv in the same parent (the trunk's conv/norm pairs) is
    folded into it and replaced by an identity. Adapters' own down/up layers stay in float: the base
    is quantized, never a user's delta.
    """
    if next(generator.parameters()).device.type != "cpu":
        raise QuantizationError("the int8 generator runs on CPU (x86 int8 kernels); on CUDA serve fp32/bf16")
    torch.backends.quantized.engine = "x86"
    for parent_name, parent in list(generator.named_modules()):
        if any(part.startswith("lora_") for part in parent_name.split(".")):
            continue
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if type(child) is not nn.Conv2d:
                continue
            after = children[i + 1] if i + 1 < len(children) else None
            norm = after[1] if after is not None and _foldable(after[1]) else None
            setattr(parent, name, Int8Conv2d(child, norm))
            if norm is not None:
                setattr(parent, after[0], nn.Identity())
    _link_chains(generator)
    return generator


def _link_chains(generator: nn.Module) -> None:
    """Mark each Int8Conv2d whose output feeds the next one directly (`_CHAINS`, all modules between
    them identities) so that it can hand its output over quantized."""
    for parent in generator.modules():
        convs, between = _CHAINS.get(type(parent).__name__, ((), ()))
        if not all(isinstance(getattr(parent, name, None), nn.Identity) for name in between):
            continue
        for own, following in itertools.pairwise(convs):
            layer = getattr(parent, own)
            if type(layer) is Int8Conv2d and type(getattr(parent, following)) is Int8Conv2d:
                layer._chain = (parent, own, following)


def finish_calibration(generator: nn.Module) -> None:
    """Switch every Int8Conv2d from recording ranges to running in int8."""
    layers = int8_layers(generator)
    empty = [name for name, layer in layers.items() if not layer.output_range.any()]
    if empty:
        raise QuantizationError(f"calibration never ran through {len(empty)} layers, e.g. {empty[0]}")
    for layer in layers.values():
        layer.finish_calibration()


@torch.no_grad()
def calibrate_int8(
    generator: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], seed: int = 0
) -> nn.Module:
    """prepare_int8, then record ranges over (content, style code) batches, then run in int8."""
    prepare_int8(generator).eval()
    for i, (content, codes) in enumerate(batches):
        generator(content, codes, generator.make_noise(content, seed=seed + i))
    finish_calibration(generator)
    return generator


def save_calibration(generator: nn.Module, directory: Path) -> Path:
    """The activation ranges of every int8 layer, as safetensors next to the checkpoint: per layer
    `NAME.input` (2, in_channels) and `NAME.output` (2,), each lo/hi."""
    ranges = {}
    for name, layer in int8_layers(generator).items():
        ranges[f"{name}.input"], ranges[f"{name}.output"] = layer.input_ranges, layer.output_range
    path = Path(directory) / CALIBRATION_FILE
    atomic_write(path, lambda p: save_file(ranges, p))
    return path


def load_int8(generator: nn.Module, directory: Path) -> nn.Module:
    """The float `generator` turned into the int8 variant whose ranges are saved in `directory`."""
    path = Path(directory) / CALIBRATION_FILE
    try:
        ranges = load_file(path)
    except Exception as exc:  # a missing or damaged file: safetensors raises several types
        raise QuantizationError(f"{path}: cannot read the int8 calibration ({exc})") from exc
    layers = int8_layers(prepare_int8(generator))
    expected = {f"{name}.{end}": getattr(layer, buffer).shape for name, layer in layers.items()
                for end, buffer in (("input", "input_ranges"), ("output", "output_range"))}  # fmt: skip
    if {key: r.shape for key, r in ranges.items()} != expected:
        raise QuantizationError(
            f"{path}: calibration does not match this generator's layers: export it again"
        )
    for name, layer in layers.items():
        layer.input_ranges.copy_(ranges[f"{name}.input"])
        layer.output_range.copy_(ranges[f"{name}.output"])
    finish_calibration(generator)
    return generator

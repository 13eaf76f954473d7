"""The int8 generator for CPU serving: every convolution runs as an x86 int8 kernel, the rest in float.

Weights are quantized per output channel (symmetric int8) when a layer first runs, activations per
tensor (affine uint8) with ranges calibrated on real photographs and procedural scenes. The float
weights stay in the module: the checkpoint, its fingerprint and therefore every user's adapter are
the same as the fp32 base's, and a LoRA wrapper around an `Int8Conv2d` adds its delta in float on
top of the int8 base output. A weight changed in place (an adapter merged into the base) is
re-quantized before the next forward, so merge-then-quantize needs no extra step.

Why eager quantized kernels rather than PT2E + Inductor (torch 2.13's recommended flow, in torchao):
PT2E only reaches int8 kernels through `torch.compile` with frozen weights. Frozen weights are
constants of the compiled graph, so a user's float adapter delta cannot be added without compiling
per user, and every new batch shape compiles again (about 25 s on 2 CPUs). Both flows are measured
side by side in `pstyle bench generator --variants`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pstyle.store.atomic import atomic_write

CALIBRATION_FILE = "int8.safetensors"  # per-layer activation ranges, next to the checkpoint's weights


class QuantizationError(ValueError):
    """The int8 variant cannot be built or loaded here (device, ranges, missing layers)."""


class Int8Conv2d(nn.Conv2d):
    """A Conv2d that records its activation ranges while calibrating and then runs in int8.

    Subclassing Conv2d keeps every attribute a LoRA wrapper or a merge reads (weight, bias, stride,
    padding) and keeps the state dict identical to the float layer's.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise QuantizationError(f"int8 convolutions need numeric zero padding, got {conv}")
        super().__init__(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, device=conv.weight.device,
        )  # fmt: skip
        self.weight, self.bias = conv.weight, conv.bias
        ranges = torch.zeros(4)  # input lo/hi, output lo/hi; not in the state dict (the checkpoint is fp32's)
        self.register_buffer("ranges", ranges, persistent=False)
        self.calibrating = True
        self._packed: tuple[int, object] | None = None  # (weight version, prepacked int8 weight)

    def __getstate__(self) -> dict:
        """Copies drop the packed kernel weight (an opaque object); it is rebuilt on first use."""
        return {**self.__dict__, "_packed": None}

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            y = super().forward(x)
            self._observe(x, y)
            return y
        qx = torch.quantize_per_tensor(x.float(), *self._input_q, torch.quint8)
        return torch.ops.quantized.conv2d(qx, self._packed_weight(), *self._output_q).dequantize()

    def finish_calibration(self) -> None:
        """Fix the recorded ranges as uint8 (scale, zero point) pairs and run in int8 from now on."""
        lo_in, hi_in, lo_out, hi_out = self.ranges.tolist()
        self._input_q, self._output_q = affine_params(lo_in, hi_in), affine_params(lo_out, hi_out)
        self.calibrating = False

    @torch.no_grad()
    def _observe(self, x: Tensor, y: Tensor) -> None:
        seen = torch.stack([x.min(), x.max(), y.min(), y.max()]).float().cpu()
        first = not self.ranges.any()
        lo = (
            torch.minimum(seen[0::2], torch.zeros(2))
            if first
            else torch.minimum(self.ranges[0::2], seen[0::2])
        )
        hi = (
            torch.maximum(seen[1::2], torch.zeros(2))
            if first
            else torch.maximum(self.ranges[1::2], seen[1::2])
        )
        self.ranges.copy_(torch.stack([lo[0], hi[0], lo[1], hi[1]]))

    @torch.no_grad()
    def _packed_weight(self) -> object:
        version = self.weight._version
        if self._packed is None or self._packed[0] != version:
            w = self.weight.detach().float().cpu()
            scales = (w.abs().amax(dim=(1, 2, 3)) / 127).clamp_min(1e-12).double()
            qw = torch.quantize_per_channel(w, scales, torch.zeros(len(w), dtype=torch.long), 0, torch.qint8)
            bias = None if self.bias is None else self.bias.detach().float().cpu()
            packed = torch.ops.quantized.conv2d_prepack(
                qw, bias, list(self.stride), list(self.padding), list(self.dilation), self.groups
            )
            self._packed = (version, packed)
        return self._packed[1]


def affine_params(lo: float, hi: float) -> tuple[float, int]:
    """uint8 scale and zero point covering [lo, hi] (a range that always includes 0, as observed)."""
    scale = max((hi - lo) / 255.0, 1e-8)
    return scale, int(min(255, max(0, round(-lo / scale))))


def int8_layers(module: nn.Module) -> dict[str, Int8Conv2d]:
    return {name: m for name, m in module.named_modules() if isinstance(m, Int8Conv2d)}


def prepare_int8(generator: nn.Module) -> nn.Module:
    """Replace every Conv2d of `generator` (in place) by a calibrating Int8Conv2d; returns it.

    Adapters' own down/up layers stay in float: the base is quantized, never a user's delta.
    """
    if next(generator.parameters()).device.type != "cpu":
        raise QuantizationError("the int8 generator runs on CPU (x86 int8 kernels); on CUDA serve fp32/bf16")
    torch.backends.quantized.engine = "x86"
    for name, module in list(generator.named_modules()):
        if type(module) is nn.Conv2d and not any(part.startswith("lora_") for part in name.split(".")):
            parent, _, child = name.rpartition(".")
            setattr(generator.get_submodule(parent), child, Int8Conv2d(module))
    return generator


def finish_calibration(generator: nn.Module) -> None:
    """Switch every Int8Conv2d from recording ranges to running in int8."""
    layers = int8_layers(generator)
    empty = [name for name, layer in layers.items() if not layer.ranges.any()]
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
    """The activation ranges of every int8 layer, as safetensors next to the checkpoint."""
    ranges = {name: layer.ranges.clone() for name, layer in int8_layers(generator).items()}
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
    if set(ranges) != set(layers) or any(r.shape != (4,) for r in ranges.values()):
        raise QuantizationError(f"{path}: calibration does not match this generator's layers")
    for name, layer in layers.items():
        layer.ranges.copy_(ranges[name])
    finish_calibration(generator)
    return generator

"""Serving variants of a base checkpoint, recorded in its meta.json as `variant`, applied at load.

`pstyle export` writes them (pstyle.training.variants). Loading a base through `apply_variant` is
how serving and the benchmarks get the same network the export measured:
  fp32      no `variant` entry: the checkpoint as trained;
  int8      the same weights (same fingerprint: users' adapters apply) plus activation ranges; every
            convolution runs as an x86 int8 kernel (pstyle.models.quantize), CPU only;
  pruned    an ordinary checkpoint with a narrower decoder (its own fingerprint: adapters are
            trained for it);
  compiled  the same weights, run through torch.compile for the served shapes, warmed up at load;
  onnx      the same weights plus model.onnx for edge runtimes; a replica serves the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pstyle.models.encoder import CODE_DIM
from pstyle.models.generator import Generator
from pstyle.models.quantize import load_int8
from pstyle.models.style_model import StyleModel

ONNX_FILE = "model.onnx"
SynthesizeFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def variant_format(meta: dict[str, Any]) -> str:
    """The checkpoint's variant: "fp32" when it has none."""
    return (meta.get("variant") or {}).get("format", "fp32")


def apply_variant(model: StyleModel, directory: Path, meta: dict[str, Any]) -> StyleModel:
    """`model` (loaded from `directory`) turned into the variant its metadata names, in place."""
    if variant_format(meta) == "int8":
        load_int8(model.generator, directory)
    return model


class Synthesize(nn.Module):
    """The generator's full-strength stylization as a module of three tensors: what torch.compile
    and the ONNX exporter take (strength and masks blend in pixel space afterwards)."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, content: Tensor, style_code: Tensor, noise: Tensor) -> Tensor:
        return self.generator.synthesize(content, style_code, noise)


def compiled_synthesize(generator: Generator, sizes: Sequence[tuple[int, int, int]] = ()) -> SynthesizeFn:
    """torch.compile of `Synthesize(generator)` with frozen weights, channels_last, and on CUDA bf16;
    each (batch, height, width) in `sizes` is run once now so no user pays for compiling it."""
    device = next(generator.parameters()).device
    module = Synthesize(generator).eval().to(memory_format=torch.channels_last)
    compiled = torch.compile(module, options={"freezing": True})

    @torch.no_grad()
    def run(content: Tensor, style_code: Tensor, noise: Tensor) -> Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return compiled(content.contiguous(memory_format=torch.channels_last), style_code, noise).float()

    for batch, h, w in sizes:
        content = torch.rand(batch, 3, h, w, device=device)
        run(content, torch.zeros(batch, CODE_DIM, device=device), generator.make_noise(content, seed=0))
    return run

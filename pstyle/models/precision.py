"""How a model runs for inference on each device: one rule shared by serving and its benchmarks.

On CUDA, bf16 autocast (no loss scaling: inference only) and channels_last (NHWC convolutions on
tensor cores); on CPU, plain fp32 NCHW, which is what CPU kernels are fastest at.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def inference_module(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` on `device`, in eval mode, in the memory layout its convolutions prefer there."""
    module = module.to(device).eval()
    return module.to(memory_format=torch.channels_last) if device.type == "cuda" else module


def inference_input(x: Tensor) -> Tensor:
    """An image batch in the layout `inference_module` chose for its device."""
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def inference_autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA, a no-op elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

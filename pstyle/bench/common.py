"""Benchmarks: speed targets live here (JSON + a short table), never in timed unit tests."""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pstyle.bench.reference import AdaINReference, JohnsonReference
from pstyle.config import ModelConfig
from pstyle.models import Generator
from pstyle.models.encoder import CODE_DIM, TAPS_DIM
from pstyle.models.precision import inference_autocast, inference_input, inference_module

PHOTO_CHROMA_STD = 0.05  # about a photograph's Cb/Cr spread


def random_codes(n: int, gen: torch.Generator, chroma_std: float = PHOTO_CHROMA_STD) -> torch.Tensor:
    """(n, CODE_DIM) style codes that look like an encoder's: N(0, 1) feature statistics, chroma
    means N(0, 0.05^2) and a chroma spread of `chroma_std`.

    The generator's last step stretches its output's chroma spread to the code's, so a code whose
    colour part is N(0, 1) too (spreads up to e^3) would measure that stretch, not the network.
    """
    codes = torch.randn(n, CODE_DIM, generator=gen)
    codes[:, TAPS_DIM : TAPS_DIM + 2] *= PHOTO_CHROMA_STD
    codes[:, TAPS_DIM + 2 :] = math.log(chroma_std)
    return codes


def machine_description(device: torch.device) -> dict[str, str | int]:
    """What the figures were measured on: they mean nothing without it."""
    desc: dict[str, str | int] = {
        "device": device.type,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        desc["gpu"] = torch.cuda.get_device_name(device)
    return desc


def time_call(
    fn: Callable[[], object], device: torch.device, warmup: int = 2, min_time: float = 1.0
) -> float:
    """Median seconds per call, after warm-up; CUDA is synchronised around every call."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 3:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def bench_generator(
    device: torch.device,
    sizes: tuple[int, ...] = (128, 256),
    batches: tuple[int, ...] = (1, 16),
    cfg: ModelConfig | None = None,
    min_time: float = 1.0,
    references: bool = True,
) -> dict:
    """Inference throughput of pstyle's generator and, in the same run, of the AdaIN and Johnson et al.
    reference networks (`pstyle.bench.reference`). On CUDA: bf16 autocast and channels_last, as served."""
    cfg = cfg or ModelConfig()
    nets: dict[str, nn.Module] = {"pstyle": Generator(cfg)}
    if references:
        nets |= {"adain_vgg19": AdaINReference(), "johnson": JohnsonReference()}
    nets = {name: inference_module(net, device) for name, net in nets.items()}
    rows = []
    for arch, net in nets.items():
        for size in sizes:
            for batch in batches:
                run = _forward(arch, net, batch, size, device)
                seconds = time_call(run, device, min_time=min_time)
                rows.append({
                    "arch": arch,
                    "size": size,
                    "batch": batch,
                    "dtype": "bf16" if device.type == "cuda" else "fp32",
                    "ms_per_batch": seconds * 1e3,
                    "ms_per_image": seconds * 1e3 / batch,
                    "images_per_s": batch / seconds,
                })  # fmt: skip
    params = {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()}
    return {"benchmark": "generator", "machine": machine_description(device), "params": params, "rows": rows}


def _forward(arch: str, net: nn.Module, batch: int, size: int, device: torch.device) -> Callable[[], object]:
    """One batch's forward pass of `arch`, inputs prepared outside the timed call."""
    content = inference_input(torch.rand(batch, 3, size, size, device=device))
    if arch == "pstyle":
        code, noise = torch.randn(batch, CODE_DIM, device=device), net.make_noise(content, seed=0)
        args: tuple = (content, code, noise)
    elif arch == "adain_vgg19":
        args = (content, torch.rand(batch, 512, size // 8, size // 8, device=device))
    else:
        args = (content,)

    def run() -> None:
        with inference_autocast(device):
            net(*args)

    return run


def generator_table(result: dict) -> str:
    lines = [f"{'arch':<12} {'size':>5} {'batch':>5} {'dtype':>5} {'ms/img':>9} {'img/s':>9}"]
    for r in result["rows"]:
        ms, ips = r["ms_per_image"], r["images_per_s"]
        lines.append(f"{r['arch']:<12} {r['size']:>5} {r['batch']:>5} {r['dtype']:>5} {ms:>9.2f} {ips:>9.1f}")
    return "\n".join(lines)


def latency_ms(seconds: list[float]) -> dict[str, float]:
    """p50/p99/mean in milliseconds of a list of timings in seconds."""
    q = statistics.quantiles([t * 1e3 for t in seconds], n=100, method="inclusive")
    return {"p50": q[49], "p99": q[98], "mean": 1e3 * sum(seconds) / len(seconds), "n": len(seconds)}


def write_result(result: dict, table: str, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result['benchmark']}-{result['machine']['device']}.json"
    path.write_text(json.dumps(result, indent=2))
    (out_dir / f"{result['benchmark']}-{result['machine']['device']}.txt").write_text(table + "\n")
    return path

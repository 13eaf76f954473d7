"""`pstyle bench generator --variants`: every serving variant against fp32, speed and quality in one run.

Speed: the generator's forward (content, code, noise -> image) at one size and batch, the variants
timed in interleaved rounds so that load on the machine falls on all of them alike; the figure is
each variant's median over rounds as a ratio to fp32 eager in the same round. Quality: the real-photo
evaluation (pstyle.evaluation.photos: 8 photos x 6 styles, never trained or calibrated on), each
metric as a relative change from fp32, plus the mean absolute pixel difference from fp32's output.
The variants are exported here from the checkpoint as `pstyle export` would (`EXPORTS`: int8, pruning
to decoder widths 16 and 12 of 24, compiled, onnx), unless a folder of exported ones is given, each
in a subfolder whose name labels its row.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pstyle.adapters import AdapterConfig, adapter_state_dict, inject_adapter
from pstyle.adapters.bank import AdapterBank
from pstyle.bench.adapters import random_state
from pstyle.bench.common import machine_description, time_call
from pstyle.config import ExportConfig
from pstyle.data.eval_photos import export as export_eval_photos
from pstyle.evaluation.photos import METRICS, evaluate_photos, load_photos, write_photo_grid
from pstyle.models.encoder import CODE_DIM
from pstyle.models.generator import NOISE_STRIDE, Generator
from pstyle.models.style_model import StyleModel
from pstyle.models.variants import ONNX_FILE, apply_variant, compiled_synthesize, variant_format
from pstyle.training.checkpoint import load_checkpoint
from pstyle.training.variants import export_variant

Forward = Callable[[Tensor, Tensor, Tensor], Tensor]  # (content, code, noise) -> image
# What the bench exports when given none: each format once, pruning at two widths of the default 24.
EXPORTS = {
    "int8": ExportConfig(format="int8"),
    "pruned-16": ExportConfig(format="pruned", channels=16),
    "pruned-12": ExportConfig(format="pruned", channels=12),
    "compiled": ExportConfig(format="compiled"),
    "onnx": ExportConfig(format="onnx"),
}


def load_forwards(base: StyleModel, exported: Path, size: int, batch: int) -> dict[str, Forward]:
    """fp32 eager (`base`) and every variant exported under `exported/<name>/`, as forward functions."""
    forwards: dict[str, Forward] = {"fp32": base.generator}
    # hidden folders are exports still being written (or abandoned): `atomic_directory`'s temporaries
    for directory in sorted(p for p in exported.iterdir() if p.is_dir() and not p.name.startswith(".")):
        model, meta = load_checkpoint(directory)
        model = apply_variant(model.eval(), directory, meta)
        fmt = variant_format(meta)
        if fmt == "compiled":
            forwards[directory.name] = compiled_synthesize(
                model.generator, [(batch, size, size), (1, size, size)]
            )
        elif fmt == "onnx":
            forwards[directory.name] = onnx_forward(directory / ONNX_FILE)
        else:
            forwards[directory.name] = model.generator
    return forwards


def onnx_forward(path: Path) -> Forward:
    """An onnxruntime session on CPU with the generator's call signature."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(content: Tensor, code: Tensor, noise: Tensor) -> Tensor:
        feeds = {"content": content.numpy(), "style_code": code.numpy(), "noise": noise.numpy()}
        return torch.from_numpy(session.run(["image"], feeds)[0])

    return run


@torch.no_grad()
def time_variants(
    forwards: dict[str, Forward], noise_dim: int, size: int, batch: int, rounds: int, min_time: float
) -> dict:
    """Per variant: median ms per image and images/s over interleaved rounds, and x fp32 per round."""
    gen = torch.Generator().manual_seed(0)
    content = torch.rand(batch, 3, size, size, generator=gen)
    code = torch.randn(batch, CODE_DIM, generator=gen)
    noise = torch.randn(batch, noise_dim, size // NOISE_STRIDE, size // NOISE_STRIDE, generator=gen)
    cpu = torch.device("cpu")
    seconds: dict[str, list[float]] = {name: [] for name in forwards}
    for _ in range(rounds):
        for name, forward in forwards.items():
            run = lambda f=forward: f(content, code, noise)  # noqa: E731
            seconds[name].append(time_call(run, cpu, warmup=1, min_time=min_time))
    rows = {}
    for name, times in seconds.items():
        ratios = [fp32 / t for fp32, t in zip(seconds["fp32"], times, strict=True)]
        rows[name] = {
            "ms_per_image": 1e3 * statistics.median(times) / batch,
            "images_per_s": batch / statistics.median(times),
            "x_fp32": statistics.median(ratios),
            "x_fp32_rounds": ratios,
        }
    return rows


@torch.no_grad()
def adapter_paths_on_int8(
    fp32: Generator, int8: Generator, size: int, users: int, rounds: int, min_time: float
) -> dict[str, Any]:
    """A batch of `users` images, each its own user's adapter, through AdapterBank on the fp32 base
    (grouped, as CPU replicas serve) and on the int8 base both ways: grouped (merge-then-quantize:
    each user's merged weights quantized for the pass) and mixed (int8 base, float per-sample deltas).
    ms per image and the mean absolute difference from the fp32 output."""
    banks = {
        name: AdapterBank(copy.deepcopy(g), 2**26, "cpu") for name, g in (("fp32", fp32), ("int8", int8))
    }
    template = copy.deepcopy(fp32)
    inject_adapter(template, "user", AdapterConfig())
    shapes = {k: v.shape for k, v in adapter_state_dict(template, "user").items()}
    for i in range(users):
        for bank in banks.values():
            bank.add(f"user{i}", random_state(shapes, seed=i))
    gen = torch.Generator().manual_seed(1)
    content = torch.rand(users, 3, size, size, generator=gen)
    ids = [f"user{i}" for i in range(users)]
    codes = torch.stack([banks["fp32"].style_code(user) for user in ids])
    noise = fp32.make_noise(content, seed=0)
    runs = {
        "fp32 grouped": lambda: banks["fp32"].forward_grouped(content, codes, noise, ids),
        "int8 grouped (merge, then quantize)": lambda: banks["int8"].forward_grouped(
            content, codes, noise, ids
        ),
        "int8 mixed (float deltas)": lambda: banks["int8"].forward(content, codes, noise, ids),
    }
    reference = runs["fp32 grouped"]()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            seconds[name].append(time_call(run, torch.device("cpu"), warmup=1, min_time=min_time))
    return {
        name: {
            "ms_per_image": 1e3 * statistics.median(seconds[name]) / users,
            "l1_vs_fp32": (run() - reference).abs().mean().item(),
        }
        for name, run in runs.items()
    }


@torch.no_grad()
def score_variants(
    model: StyleModel,
    forwards: dict[str, Forward],
    size: int,
    grid: Path | None,
    photos: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The real-photo evaluation for every variant (the first `photos` content photos and styles, all
    by default); relative change of each metric from fp32."""
    with tempfile.TemporaryDirectory() as tmp:
        content_dir, styles_dir = export_eval_photos(Path(tmp))
        contents, styles = load_photos(content_dir, size), load_photos(styles_dir, size)
    contents, styles = dict(list(contents.items())[:photos]), dict(list(styles.items())[:photos])

    def method(forward: Forward) -> Callable[[Tensor, Tensor], Tensor]:
        def stylize(content: Tensor, style: Tensor) -> Tensor:
            code = model.encoder(style)
            noise = model.generator.make_noise(content, seed)
            return forward(content, code, noise).clamp(0, 1)

        return stylize

    methods = {name: method(forward) for name, forward in forwards.items()}
    report = evaluate_photos(methods, contents, styles)
    fp32 = report["methods"]["fp32"]
    change = {
        name: {m: (scores[m] - fp32[m]) / abs(fp32[m]) for m in METRICS}
        for name, scores in report["methods"].items()
    }
    pixel = {
        name: statistics.mean(
            (methods[name](c[None], s[None]) - methods["fp32"](c[None], s[None])).abs().mean().item()
            for c in list(contents.values())[:4]
            for s in list(styles.values())[:2]
        )
        for name in methods
    }
    if grid is not None:
        shown = [name for name in methods if name == "fp32" or name.startswith(("int8", "pruned"))]
        write_photo_grid({name: methods[name] for name in shown}, contents, styles, grid)
    return {"metrics": report["methods"], "relative_change": change, "pixel_l1_vs_fp32": pixel}


def bench_variants(
    model_dir: Path,
    exported: Path | None = None,
    size: int = 256,
    batch: int = 1,
    rounds: int = 5,
    min_time: float = 1.0,
    grid: Path | None = None,
    photos: int | None = None,
    adapter_users: int = 4,
) -> dict[str, Any]:
    """Export (unless `exported` holds them), time and score every variant against fp32, and time a
    user's adapter on the int8 base both ways."""
    with tempfile.TemporaryDirectory() as tmp:
        if exported is None:
            exported = Path(tmp)
            for name, config in EXPORTS.items():
                export_variant(model_dir, exported / name, config)
        model, _ = load_checkpoint(model_dir)
        model.eval()
        forwards = load_forwards(model, exported, size, batch)
        speed = time_variants(forwards, model.generator.noise_dim, size, batch, rounds, min_time)
        adapters = (
            adapter_paths_on_int8(model.generator, forwards["int8"], size, adapter_users, rounds, min_time)
            if "int8" in forwards
            else {}
        )
        quality = score_variants(model, forwards, size, grid, photos)
    return {
        "benchmark": "generator-variants",
        "machine": machine_description(torch.device("cpu")),
        "size": size,
        "batch": batch,
        "speed": speed,
        "quality": quality,
        "adapters_on_int8": adapters,
    }


def variants_table(result: dict[str, Any]) -> str:
    """One row per variant: speed vs fp32 and the largest relative quality change."""
    quality = result["quality"]
    lines = [f"{'variant':<10} {'ms/img':>8} {'x fp32':>7} {'worst metric change':>22} {'L1 vs fp32':>11}"]
    for name, speed in result["speed"].items():
        change = quality["relative_change"][name]
        worst = max(change, key=lambda m: _worse(m, change[m]))
        lines.append(
            f"{name:<10} {speed['ms_per_image']:>8.1f} {speed['x_fp32']:>7.2f} "
            f"{worst + f' {100 * change[worst]:+.1f}%':>22} {quality['pixel_l1_vs_fp32'][name]:>11.4f}"
        )
    for name, row in result["adapters_on_int8"].items():
        lines.append(f"{name:<36} {row['ms_per_image']:>8.1f} ms/img  L1 vs fp32 {row['l1_vs_fp32']:.4f}")
    lines.append(
        f"({result['size']} px, batch {result['batch']}, {result['machine']['torch_threads']} threads)"
    )
    return "\n".join(lines)


def _worse(metric: str, change: float) -> float:
    """How much worse a relative change makes `metric` (positive = worse), by its direction."""
    return -change if METRICS[metric][1] == "higher" else change

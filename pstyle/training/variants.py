"""`pstyle export`: a base checkpoint turned into a serving variant the registry can publish.

Every variant is a checkpoint directory (model.safetensors + meta.json with a `variant` entry), so
`pstyle registry publish base NAME DIR` publishes it like any base and a replica selects it with
`ServeConfig.base` / `base_ref`; `pstyle.models.variants.apply_variant` rebuilds it at load.

Calibration (int8 ranges, pruning importance) and the pruned fine-tune run on the photographs that
packages ship (pstyle.data.photos) and on procedural scenes, each in styles encoded from real style
images and scenes: never on the evaluation photos.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pstyle.config import ExportConfig, PStyleConfig
from pstyle.data.photos import photo_crops, real_style_users
from pstyle.data.synth import scene_tensors
from pstyle.models.encoder import CODE_DIM
from pstyle.models.generator import DOWNSAMPLING, NOISE_STRIDE
from pstyle.models.prune import channel_importance, pruned_generator
from pstyle.models.quantize import calibrate_int8, save_calibration
from pstyle.models.style_model import StyleModel
from pstyle.models.variants import ONNX_FILE, Synthesize
from pstyle.store.atomic import atomic_directory, atomic_write
from pstyle.training.checkpoint import META_FILE, MODEL_FILE, load_checkpoint, save_checkpoint
from pstyle.training.distill import distill


@torch.no_grad()
def calibration_batches(model: StyleModel, cfg: ExportConfig) -> list[tuple[Tensor, Tensor]]:
    """`cfg.calibration_batches` batches of (content, style codes): half shipped photo crops, half
    procedural scenes, paired at random with the codes of four real style sets and of other scenes."""
    n = cfg.calibration_batches * cfg.batch
    gen = torch.Generator().manual_seed(cfg.seed)
    content = torch.cat(
        [photo_crops(n - n // 2, cfg.size, cfg.seed), scene_tensors(n // 2, cfg.size, cfg.seed)]
    )
    style_sets = [*real_style_users(size=cfg.size, count=4).values()]
    if n > len(style_sets):
        style_sets += [scene[None] for scene in scene_tensors(n - len(style_sets), cfg.size, cfg.seed + 1)]
    codes = torch.cat([model.encoder(styles) for styles in style_sets])
    content, codes = (
        content[torch.randperm(n, generator=gen)],
        codes[torch.randperm(len(codes), generator=gen)[:n]],
    )
    return [(content[i : i + cfg.batch], codes[i : i + cfg.batch]) for i in range(0, n, cfg.batch)]


def export_variant(model_dir: Path, out: Path, cfg: ExportConfig, progress: bool = True) -> dict[str, Any]:
    """Write the `cfg.format` variant of the checkpoint in `model_dir` to `out`; returns its meta.

    `out` appears complete or not at all (built in a temporary sibling, then renamed).
    """
    model, meta = load_checkpoint(model_dir)
    model.eval()
    if cfg.format == "pruned" and cfg.channels >= model.cfg.channels:
        raise ValueError(f"channels {cfg.channels} does not prune a decoder of width {model.cfg.channels}")
    variant: dict[str, Any] = {
        "format": cfg.format,
        "source_fingerprint": meta["fingerprint"],
        "export": cfg.to_dict(),
    }
    started = time.perf_counter()
    with atomic_directory(Path(out)) as tmp:
        if cfg.format == "pruned":
            meta = _export_pruned(model, meta, cfg, tmp, variant, progress)
        else:
            for name in (MODEL_FILE, META_FILE):
                shutil.copyfile(Path(model_dir) / name, tmp / name)
            if cfg.format == "int8":
                generator = calibrate_int8(
                    copy.deepcopy(model.generator), calibration_batches(model, cfg), cfg.seed
                )
                save_calibration(generator, tmp)
            elif cfg.format == "onnx":
                _export_onnx(model, cfg, tmp / ONNX_FILE)
        variant["export_s"] = round(time.perf_counter() - started, 1)
        meta = {**meta, "variant": variant}
        atomic_write(
            tmp / META_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=2, sort_keys=True))
        )
    return meta


def _export_pruned(
    model: StyleModel,
    meta: dict[str, Any],
    cfg: ExportConfig,
    tmp: Path,
    variant: dict[str, Any],
    progress: bool,
) -> dict[str, Any]:
    """Rank channels, slice the generator to `cfg.channels`, fine-tune it towards the full one, save."""
    batches = calibration_batches(model, cfg)
    importance = channel_importance(model.generator, batches, cfg.seed)
    small, small_cfg = pruned_generator(model.generator, model.cfg, importance, cfg.channels)
    losses = distill(small, model.generator, batches, cfg.distill_steps, cfg.distill_lr, cfg.seed, progress)
    config = PStyleConfig.from_dict(meta["config"])
    config.model = small_cfg
    pruned = StyleModel(small_cfg)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("generator.")}
    pruned.load_state_dict(state | {f"generator.{k}": v for k, v in small.state_dict().items()})
    variant["distill_loss"] = {"first": losses[0] if losses else None, "last": losses[-1] if losses else None}
    variant["pruned_from_channels"] = model.cfg.channels
    return save_checkpoint(tmp, pruned, config, meta["features"], meta.get("step", 0))


def _export_onnx(model: StyleModel, cfg: ExportConfig, path: Path) -> None:
    """The stylization as ONNX (opset 18) with dynamic batch, height and width."""
    content = torch.rand(1, 3, cfg.size, cfg.size)
    args = (content, torch.zeros(1, CODE_DIM), model.generator.make_noise(content, seed=0))
    # H and W are multiples of the trunk's stride; the noise maps are a quarter of them.
    batch, rows, cols = torch.export.Dim("batch"), torch.export.Dim("rows"), torch.export.Dim("cols")
    content_dims = {0: batch, 2: DOWNSAMPLING * rows, 3: DOWNSAMPLING * cols}
    quarter = DOWNSAMPLING // NOISE_STRIDE
    noise_dims = {0: batch, 2: quarter * rows, 3: quarter * cols}
    torch.onnx.export(
        Synthesize(model.generator).eval(),
        args,
        str(path),
        dynamo=True,
        input_names=["content", "style_code", "noise"],
        output_names=["image"],
        dynamic_shapes=(content_dims, {0: batch}, noise_dims),
        opset_version=18,
    )

"""`pstyle export`: a base checkpoint turned into a serving variant the registry can publish.

Every variant is a checkpoint directory (model.safetensors + meta.json with a `variant` entry), so
`pstyle registry publish base NAME DIR` publishes it like any base and a replica selects it with
`ServeConfig.base` / `base_ref`; `pstyle.models.variants.apply_variant` rebuilds it at load.

Calibration (int8 ranges, pruning importance) and the pruned fine-tune run on the photographs that
packages ship (pstyle.data.photos) and on procedural scenes, each paired with a style code from a
pool of real style images, procedural users, scenes and photos: never on the evaluation photos.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
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
from pstyle.training.stream_rows import user_style_rows

STYLE_POOL = {"procedural users": 48, "scenes": 24, "photo crops": 24}  # style sets per kind


@torch.no_grad()
def style_code_pool(model: StyleModel, size: int, seed: int) -> Tensor:
    """Codes of varied style sets: the four real-image users, procedural users of every family, and
    single scenes and photo crops. Distilling a pruned generator on a few dozen fixed codes taught it
    those codes' outputs rather than the code space: unseen styles lost texture (docs/benchmarks.md,
    "Serving variants")."""
    users = user_style_rows({"id": np.arange(STYLE_POOL["procedural users"])}, size, 2, seed)["styles"]
    batches_of_sets = [  # (sets, images per set, 3, S, S): the encoder takes each group in one pass
        torch.stack(list(real_style_users(size=size, count=4).values())),
        torch.from_numpy(users).float().div(255),
        scene_tensors(STYLE_POOL["scenes"], size, seed + 1)[:, None],
        photo_crops(STYLE_POOL["photo crops"], size, seed + 2)[:, None],
    ]
    return torch.cat([model.encoder(sets) for sets in batches_of_sets])


@torch.no_grad()
def paired_batches(
    model: StyleModel, cfg: ExportConfig, pairs: int, seed: int
) -> list[tuple[Tensor, Tensor]]:
    """`pairs` (content, style code) pairs in batches of `cfg.batch`: half shipped photo crops, half
    procedural scenes, each with a code drawn from `style_code_pool`."""
    gen = torch.Generator().manual_seed(seed)
    half = pairs // 2
    content = torch.cat([photo_crops(pairs - half, cfg.size, seed), scene_tensors(half, cfg.size, seed)])
    codes = style_code_pool(model, cfg.size, seed)
    content = content[torch.randperm(pairs, generator=gen)]
    codes = codes[torch.randint(len(codes), (pairs,), generator=gen)]
    return [(content[i : i + cfg.batch], codes[i : i + cfg.batch]) for i in range(0, pairs, cfg.batch)]


def calibration_batches(model: StyleModel, cfg: ExportConfig) -> list[tuple[Tensor, Tensor]]:
    """What int8 ranges and pruning importance are measured on."""
    return paired_batches(model, cfg, cfg.calibration_batches * cfg.batch, cfg.seed)


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
    pairs = paired_batches(model, cfg, cfg.distill_pairs, cfg.seed + 1)
    losses = distill(small, model.generator, pairs, cfg.distill_steps, cfg.distill_lr, cfg.seed, progress)
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

"""Checkpoints: safetensors weights + JSON metadata + a base-model fingerprint. Nothing is pickled.

A checkpoint directory holds
  model.safetensors   every network's weights, keys prefixed by network name
  meta.json           config, fingerprint, feature-extractor description, step, creation time
  train_state.*       (training only) optimizer tensors and their JSON skeleton, RNG states
Files are written to temporary names and renamed, meta.json last, and loading re-hashes the
weights against the fingerprint, so a torn or tampered checkpoint is refused rather than used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from pstyle import __version__
from pstyle.config import PStyleConfig
from pstyle.models.style_model import StyleModel
from pstyle.store.atomic import atomic_write

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
STATE_FILE = "train_state.safetensors"
STATE_META_FILE = "train_state.json"
FINGERPRINTED = ("encoder", "generator")  # what adapters and style codes depend on


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not match what it claims to be."""


def fingerprint(model: StyleModel) -> str:
    """sha256 of the architecture config and the encoder/generator weights: names a base model.

    Adapters record it, so one trained on another base (or another version) is refused.
    """
    h = hashlib.sha256(json.dumps(dataclasses.asdict(model.cfg), sort_keys=True).encode())
    for part in FINGERPRINTED:
        state = getattr(model, part).state_dict()
        for key in sorted(state):
            tensor = state[key].detach().to("cpu", torch.float32).contiguous()
            h.update(f"{part}.{key}:{tuple(tensor.shape)}".encode())
            h.update(tensor.numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(
    directory: Path,
    model: StyleModel,
    config: PStyleConfig,
    features: dict[str, Any],
    step: int = 0,
    train_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a checkpoint atomically (file by file, meta last); returns the metadata written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / MODEL_FILE, lambda p: save_file(tensors, p))
    if train_state is not None:
        flat, skeleton = flatten_state(train_state)
        atomic_write(directory / STATE_FILE, lambda p: save_file(flat, p))
        atomic_write(directory / STATE_META_FILE, lambda p: Path(p).write_text(json.dumps(skeleton)))
    meta = {
        "format": "pstyle-checkpoint/1",
        "pstyle_version": __version__,
        "config": config.to_dict(),
        "fingerprint": fingerprint(model),
        "features": features,
        "step": step,
        "created": time.time(),
        **(extra or {}),
    }
    atomic_write(
        directory / META_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=2, sort_keys=True))
    )
    return meta


def load_checkpoint(directory: Path, device: torch.device | str = "cpu") -> tuple[StyleModel, dict[str, Any]]:
    """Rebuild the model from a checkpoint directory and verify its fingerprint."""
    meta = read_meta(directory)
    config = PStyleConfig.from_dict(meta["config"])
    model = StyleModel(config.model)
    try:
        model.load_state_dict(load_file(Path(directory) / MODEL_FILE))
    except Exception as exc:  # safetensors and load_state_dict raise several types for bad files
        raise CheckpointError(f"{directory}: cannot load {MODEL_FILE}: {exc}") from exc
    if fingerprint(model) != meta["fingerprint"]:
        raise CheckpointError(
            f"{directory}: weights do not match the recorded fingerprint (corrupt or replaced)"
        )
    return model.to(device), meta


def read_meta(directory: Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a pstyle checkpoint (no {META_FILE})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: unreadable metadata: {exc}") from exc


def load_train_state(directory: Path) -> dict[str, Any] | None:
    """The optimizer/RNG state saved next to the weights, or None for an inference-only checkpoint."""
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file():
        return None
    skeleton = json.loads((directory / STATE_META_FILE).read_text())
    return unflatten_state(load_file(directory / STATE_FILE), skeleton)


def flatten_state(state: Any, prefix: str = "") -> tuple[dict[str, Tensor], Any]:
    """Split nested dicts/lists into a flat tensor dict (for safetensors) and a JSON skeleton.

    This is how optimizer state_dicts are saved without pickle: tensors become references.
    """
    tensors: dict[str, Tensor] = {}
    if isinstance(state, Tensor):
        tensors[prefix] = state.detach().cpu().contiguous()
        return tensors, {"__tensor__": prefix}
    if isinstance(state, dict):
        skeleton = {"__dict__": []}
        for key, value in state.items():
            sub_t, sub_s = flatten_state(value, f"{prefix}.{key}" if prefix else str(key))
            tensors.update(sub_t)
            skeleton["__dict__"].append([key, sub_s])  # keeps int keys (optimizer param ids) as ints
        return tensors, skeleton
    if isinstance(state, list | tuple):
        items = []
        for i, value in enumerate(state):
            sub_t, sub_s = flatten_state(value, f"{prefix}.{i}")
            tensors.update(sub_t)
            items.append(sub_s)
        return tensors, {"__list__": items, "tuple": isinstance(state, tuple)}
    return tensors, {"__value__": state}


def unflatten_state(tensors: dict[str, Tensor], skeleton: Any) -> Any:
    """Inverse of `flatten_state`."""
    if "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if "__dict__" in skeleton:
        return {key: unflatten_state(tensors, sub) for key, sub in skeleton["__dict__"]}
    if "__list__" in skeleton:
        items = [unflatten_state(tensors, sub) for sub in skeleton["__list__"]]
        return tuple(items) if skeleton["tuple"] else items
    return skeleton["__value__"]

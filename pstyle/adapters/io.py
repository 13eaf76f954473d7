"""Adapter files: adapter.safetensors (tensors) + adapter.json (metadata). Nothing is pickled.

adapter.json records who the adapter is for, the base model's fingerprint, the AdapterConfig,
how it was trained, its metrics, and the sha256 of adapter.safetensors. Both files are written
to temporary names and renamed, json last: a reader sees a complete adapter, and a tensor file
that does not match its json (a torn pair, bit rot, tampering) is refused by the hash check.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, NamedTuple

from safetensors.torch import load as load_tensors
from safetensors.torch import save_file
from torch import Tensor, nn

from pstyle.adapters.inject import (
    adapter_config,
    adapter_state_dict,
    inject_adapter,
    load_adapter_state,
    remove_adapter,
)
from pstyle.adapters.lora import AdapterError
from pstyle.config import AdapterConfig
from pstyle.store.atomic import atomic_write

TENSORS_FILE = "adapter.safetensors"
META_FILE = "adapter.json"
FORMAT = "pstyle-adapter/1"
REQUIRED_META = ("user_id", "version", "base_fingerprint")


class AdapterFile(NamedTuple):
    """A verified adapter read from disk: CPU tensors, its config and its metadata."""

    state: dict[str, Tensor]
    config: AdapterConfig
    meta: dict[str, Any]


def save_adapter(path_dir: Path, generator: nn.Module, name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Write adapter `name` to `path_dir`; `meta` needs user_id, version, base_fingerprint and may
    carry training (config dict), metrics and anything else JSON-able. Returns the json written."""
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise ValueError(f"adapter metadata lacks {missing}")
    directory = Path(path_dir)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.cpu().contiguous() for k, v in adapter_state_dict(generator, name).items()}
    atomic_write(directory / TENSORS_FILE, lambda p: save_file(tensors, p))
    record = {
        "training": {},
        "metrics": {},
        **meta,
        "format": FORMAT,
        "adapter": adapter_config(generator, name).to_dict(),
        "created": time.time(),
        "sha256": hashlib.sha256((directory / TENSORS_FILE).read_bytes()).hexdigest(),
    }
    text = json.dumps(record, indent=2, sort_keys=True)
    atomic_write(directory / META_FILE, lambda p: Path(p).write_text(text))
    return record


def read_adapter(path_dir: Path, base_fingerprint: str) -> AdapterFile:
    """Read and verify an adapter for the base model named by `base_fingerprint` (AdapterError if not)."""
    directory = Path(path_dir)
    meta_path, tensors_path = directory / META_FILE, directory / TENSORS_FILE
    if not meta_path.is_file() or not tensors_path.is_file():
        raise AdapterError(f"{directory}: not an adapter (needs {META_FILE} and {TENSORS_FILE})")
    return parse_adapter(meta_path.read_bytes(), tensors_path.read_bytes(), base_fingerprint, str(directory))


def parse_adapter(meta_bytes: bytes, tensor_bytes: bytes, base_fingerprint: str, where: str) -> AdapterFile:
    """Verify an adapter given as its two files' bytes (e.g. straight from the registry); `where`
    names it in errors."""
    try:
        meta = json.loads(meta_bytes)
        config = AdapterConfig.from_dict(meta["adapter"])
        recorded_fp, recorded_hash = meta["base_fingerprint"], meta["sha256"]
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AdapterError(f"{where}: unreadable adapter metadata: {exc!r}") from exc
    if recorded_fp != base_fingerprint:
        raise AdapterError(
            f"{where}: adapter for user {meta.get('user_id')!r} was trained on base model "
            f"{recorded_fp[:12]}…, not on this base model {base_fingerprint[:12]}…; retrain it on this base"
        )
    if hashlib.sha256(tensor_bytes).hexdigest() != recorded_hash:
        raise AdapterError(f"{where}: {TENSORS_FILE} does not match the sha256 in {META_FILE} (corrupt)")
    try:
        state = load_tensors(tensor_bytes)
    except Exception as exc:  # safetensors raises several types for malformed files
        raise AdapterError(f"{where}: {TENSORS_FILE} is not a valid safetensors file: {exc}") from exc
    return AdapterFile(state, config, meta)


def load_adapter(path_dir: Path, generator: nn.Module, name: str, base_fingerprint: str) -> dict[str, Any]:
    """Verify the adapter in `path_dir` and inject it into `generator` as `name`; returns its metadata.

    On any mismatch the generator is left without `name` and AdapterError says why.
    """
    adapter = read_adapter(path_dir, base_fingerprint)
    inject_adapter(generator, name, adapter.config)
    try:
        load_adapter_state(generator, name, adapter.state)
    except AdapterError as exc:
        remove_adapter(generator, name)
        raise AdapterError(f"{path_dir}: {exc}") from exc
    return adapter.meta


def adapter_nbytes(path_dir: Path) -> int:
    """Size on disk of a saved adapter (both files), e.g. to check it against a size budget."""
    return sum((Path(path_dir) / f).stat().st_size for f in (TENSORS_FILE, META_FILE))

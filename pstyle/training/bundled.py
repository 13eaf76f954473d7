"""The base model that ships inside the package, so `pstyle stylize photo.jpg --style art.jpg` works
with no training and no download.

`pstyle/weights/base/` is an ordinary checkpoint folder (model.safetensors + meta.json); its files'
sha256 are pinned in `pstyle/weights/SHA256SUMS` and checked before every load, so a truncated or
replaced file is refused with a one-line error naming it. `pstyle bundle CKPT` installs a newly
trained checkpoint there (the recipe is `pstyle/weights/base.yaml`).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from pstyle.config import PStyleConfig
from pstyle.training.checkpoint import META_FILE, MODEL_FILE, CheckpointError, read_meta

WEIGHTS_DIR = Path(__file__).parents[1] / "weights"
BUNDLED_DIR = WEIGHTS_DIR / "base"
CHECKSUMS = WEIGHTS_DIR / "SHA256SUMS"
FILES = (MODEL_FILE, META_FILE)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pinned() -> dict[str, str]:
    if not CHECKSUMS.is_file():
        raise CheckpointError(f"{CHECKSUMS}: missing; reinstall pstyle or pass --model")
    pinned = {}
    for line in CHECKSUMS.read_text().splitlines():
        digest, _, name = line.partition("  ")
        pinned[name.strip()] = digest.strip()
    return pinned


def bundled_model_dir() -> Path:
    """The bundled checkpoint folder, after checking every file against its pinned sha256."""
    pinned = _pinned()
    for name in FILES:
        path = BUNDLED_DIR / name
        if not path.is_file():
            raise CheckpointError(f"{path}: the bundled base model file is missing; reinstall pstyle")
        if name not in pinned or _sha256(path) != pinned[name]:
            raise CheckpointError(f"{path}: sha256 does not match the pinned one (corrupt or replaced)")
    return BUNDLED_DIR


def resolve_model_dir(model_dir: Path | None) -> Path:
    """A checkpoint folder the user named, or the verified bundled base."""
    return bundled_model_dir() if model_dir is None else Path(model_dir)


def bundle(checkpoint_dir: Path) -> Path:
    """Install a trained checkpoint as the bundled base (weights and metadata only) and pin it."""
    checkpoint_dir = Path(checkpoint_dir)
    read_meta(checkpoint_dir)  # refuses a folder that is not a checkpoint
    BUNDLED_DIR.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(checkpoint_dir / name, BUNDLED_DIR / name)
    CHECKSUMS.write_text("".join(f"{_sha256(BUNDLED_DIR / n)}  {n}\n" for n in FILES))
    return BUNDLED_DIR


def warm_start_preset(image_size: int = 64, steps: int = 100) -> PStyleConfig:
    """Fine-tuning from the bundled base: its architecture and loss weights, a gentler learning rate.

    Used by `pstyle demo`, so minutes of training on 2 CPUs start from a model that already does
    real style transfer instead of from noise.
    """
    config = PStyleConfig.from_dict(read_meta(bundled_model_dir())["config"])
    config.train.init_from = "bundled"
    config.train.image_size = image_size
    config.train.steps = steps
    config.train.lr_g, config.train.lr_d = 1e-4, 2e-4
    config.train.checkpoint_every = config.train.sample_every = max(steps // 4, 1)
    return config

"""The base model that ships inside the package, so `pstyle stylize photo.jpg --style art.jpg` works
with no training and no download.

`pstyle/weights/base/` is an ordinary checkpoint folder (model.safetensors + meta.json); its files'
sha256 are pinned (`pstyle/pinned.py`) and checked before every load. `pstyle bundle CKPT` installs a
newly trained checkpoint there (the recipe is `pstyle/weights/base.yaml`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pstyle.config import PStyleConfig
from pstyle.pinned import CHECKSUMS, WEIGHTS_DIR, pin, verified
from pstyle.training.checkpoint import META_FILE, MODEL_FILE, read_meta

BUNDLED_DIR = WEIGHTS_DIR / "base"
FILES = (MODEL_FILE, META_FILE)


def bundled_model_dir() -> Path:
    """The bundled checkpoint folder, after checking every file against its pinned sha256."""
    for name in FILES:
        verified(BUNDLED_DIR / name, "bundled base model", CHECKSUMS)
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
    pin([BUNDLED_DIR / n for n in FILES], CHECKSUMS)
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

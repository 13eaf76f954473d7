"""Shared fixtures: small configs and a synthetic dataset generated once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pstyle.config import ModelConfig, PStyleConfig


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture
def small_model_cfg() -> ModelConfig:
    """A narrow model: every code path, a fraction of the compute."""
    return ModelConfig(
        channels=8,
        res_blocks=2,
        style_dim=16,
        noise_dim=8,
        encoder_channels=8,
        disc_channels=8,
        segmenter_channels=4,
    )


@pytest.fixture
def small_config(small_model_cfg: ModelConfig) -> PStyleConfig:
    cfg = PStyleConfig(model=small_model_cfg)
    cfg.train.image_size = 32
    cfg.train.batch_size = 4
    cfg.train.style_images = 2
    cfg.train.steps = 4
    cfg.train.checkpoint_every = 2
    cfg.train.sample_every = 2
    return cfg


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small deterministic synthetic dataset, shared read-only by the whole session."""
    from pstyle.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth") / "data"
    return synthesize(out, n_content=16, n_users=10, images_per_user=5, size=64, seed=0)

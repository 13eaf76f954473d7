"""Shared fixtures: small configs, a synthetic dataset, and a real S3-compatible server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
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


BASE_STEPS = 100  # ~70 s on 2 CPUs at 64 px


@pytest.fixture(scope="session")
def trained_base(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base model trained briefly (seeded) on the synthetic data, shared by the session."""
    from pstyle.config import cpu_preset
    from pstyle.train import train_base

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("base") / "base"
    return train_base(cpu_preset(64, BASE_STEPS), synth_dir, out, progress=False)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small deterministic synthetic dataset, shared read-only by the whole session."""
    from pstyle.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth") / "data"
    return synthesize(out, n_content=16, n_users=10, images_per_user=5, size=64, seed=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3-compatible HTTP server (moto_server) on loopback, for the whole session."""
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3's standard configuration chain at the local server, with dummy credentials."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_server

"""Shared fixtures: small configs, a synthetic dataset, and a real S3-compatible server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fixtures.tiny import tiny_config, tiny_model

from pstyle.bench.loopback_s3 import local_s3_server
from pstyle.config import ModelConfig, PStyleConfig


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture
def small_model_cfg() -> ModelConfig:
    """A narrow model: every code path, a fraction of the compute."""
    return tiny_model()


@pytest.fixture
def small_config() -> PStyleConfig:
    return tiny_config()


BASE_STEPS = 100  # enough for the trained-model tests, at 64 px


@pytest.fixture(scope="session")
def trained_base(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base model trained briefly (seeded) on the synthetic data, shared by the session."""
    from pstyle.config import cpu_preset
    from pstyle.training.trainer import train_base

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("base") / "base"
    return train_base(cpu_preset(64, BASE_STEPS), synth_dir, out, progress=False)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small deterministic synthetic dataset, shared read-only by the whole session."""
    from pstyle.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth") / "data"
    return synthesize(out, n_content=16, n_users=10, images_per_user=5, size=64, seed=0)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3-compatible HTTP server (moto_server) on loopback, for the whole session."""
    with local_s3_server() as url:
        yield url


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3's standard configuration chain at the local server, with dummy credentials."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_server


def make_bucket(endpoint: str) -> str:
    """A fresh bucket on the S3 server, so tests never see each other's objects."""
    import uuid

    import boto3

    name = f"pstyle-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test against both backends: a temp folder, and a fresh bucket on moto_server."""
    if request.param == "local":
        return str(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_env")
    return f"s3://{make_bucket(endpoint)}/pre/fix"  # a nested prefix, as on a shared bucket


@pytest.fixture
def store(store_uri: str):  # noqa: ANN201 - a Store; imported lazily like the code under test does
    from pstyle.store import open_store

    return open_store(store_uri)


ADAPTER_BASE_FINGERPRINT = "f" * 64


@pytest.fixture
def make_adapter(small_model_cfg: ModelConfig):  # noqa: ANN201 - a factory
    """Save a small random non-zero adapter for `user` into a directory (for registry/serving tests)."""
    from pstyle.adapters import AdapterConfig, inject_adapter
    from pstyle.adapters.io import save_adapter
    from pstyle.models.generator import Generator

    def make(directory: Path, user: str, seed: int = 0, fingerprint: str = ADAPTER_BASE_FINGERPRINT) -> Path:
        torch.manual_seed(seed)
        gen = Generator(small_model_cfg)
        inject_adapter(gen, user, AdapterConfig(rank=2))
        for p in gen.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.1)
        save_adapter(
            directory, gen, user, {"user_id": user, "version": "local", "base_fingerprint": fingerprint}
        )
        return directory

    return make

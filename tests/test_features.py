"""Feature extractors: seeded random net by default, VGG19 from a user-supplied state dict."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import vgg19

from pstyle.config import FeatureConfig
from pstyle.models.features import FeatureExtractor


def test_random_features_are_deterministic_multiscale_and_frozen():
    a, b = FeatureExtractor(FeatureConfig(random_seed=3)), FeatureExtractor(FeatureConfig(random_seed=3))
    x = torch.rand(2, 3, 32, 32)
    fa, fb = a(x), b(x)
    assert [f.shape[-1] for f in fa] == [32, 16, 8]
    assert all(torch.equal(p, q) for p, q in zip(fa, fb, strict=True))
    assert not torch.equal(FeatureExtractor(FeatureConfig(random_seed=4))(x)[0], fa[0])
    assert all(not p.requires_grad for p in a.parameters())
    assert a.describe() == {"kind": "random", "seed": 3, "channels": 64}


@pytest.fixture(scope="module")
def vgg_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        k: v.contiguous() for k, v in vgg19(weights=None).state_dict().items() if k.startswith("features.")
    }


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_vgg19_loads_state_dict_from_file(tmp_path, vgg_state, fmt):
    path = tmp_path / f"vgg19.{fmt}"
    if fmt == "safetensors":
        save_file(vgg_state, path)
    else:
        torch.save(vgg_state, path)  # a plain state dict, as torchvision publishes it
    extractor = FeatureExtractor(FeatureConfig(vgg19_weights=str(path)))
    feats = extractor(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512]
    assert extractor.describe()["kind"] == "vgg19" and len(extractor.describe()["sha256"]) == 64
    assert torch.equal(extractor.net[0].weight, vgg_state["features.0.weight"])


def test_vgg19_refuses_pickled_objects_and_incomplete_weights(tmp_path, vgg_state):
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.zeros(1), "obj": object()}, evil)
    with pytest.raises(Exception, match="(?i)weights only|unpickl|unsupported"):
        FeatureExtractor(FeatureConfig(vgg19_weights=str(evil)))
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in vgg_state.items() if k != "features.19.weight"}, partial)
    with pytest.raises(ValueError, match="missing"):
        FeatureExtractor(FeatureConfig(vgg19_weights=str(partial)))
    with pytest.raises(FileNotFoundError):
        FeatureExtractor(FeatureConfig(vgg19_weights=str(tmp_path / "none.pth")))


def test_vgg19_loads_from_s3_uri(s3_env, tmp_path, vgg_state):
    import boto3

    path = tmp_path / "vgg19.safetensors"
    save_file(vgg_state, path)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="weights")
    s3.upload_file(str(path), "weights", "vgg/vgg19.safetensors")
    extractor = FeatureExtractor(FeatureConfig(vgg19_weights="s3://weights/vgg/vgg19.safetensors"))
    assert torch.equal(extractor.net[0].weight, vgg_state["features.0.weight"])
    assert extractor.describe()["weights"] == "s3://weights/vgg/vgg19.safetensors"
    with pytest.raises(ValueError, match="malformed S3 URI"):
        FeatureExtractor(FeatureConfig(vgg19_weights="s3://weights"))
    with pytest.raises(FileNotFoundError, match="NoSuchKey"):
        FeatureExtractor(FeatureConfig(vgg19_weights="s3://weights/vgg/missing.safetensors"))

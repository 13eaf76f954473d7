"""Feature extractors: pretrained EfficientNet-Lite0 by default, a seeded random net on request, VGG19
from a user-supplied state dict."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import vgg19

from pstyle.config import FeatureConfig
from pstyle.models.features import FeatureExtractor


def test_default_features_are_the_pretrained_trunk_with_its_sha256():
    extractor = FeatureExtractor(FeatureConfig())
    feats = extractor(torch.rand(2, 3, 64, 64))
    assert [f.shape[1:] for f in feats] == [(16, 32, 32), (24, 16, 16), (40, 8, 8), (112, 4, 4)]
    desc = extractor.describe()
    assert desc["kind"] == "efficientnet_lite0" and len(desc["sha256"]) == 64
    assert extractor.shares_trunk_with_encoder
    assert all(not p.requires_grad for p in extractor.parameters())


def test_pretrained_classifier_recognises_a_real_photo():
    """The shipped ImageNet weights really load: the sklearn temple photo is classified as a palace,
    church or similar building, not noise (ImageNet ids 442 bell cote, 497 church, 698 palace)."""
    from pstyle.data.photos import load_real_image, photo_paths
    from pstyle.models.backbone import IMAGENET_MEAN, IMAGENET_STD, efficientnet_lite0

    image = load_real_image(photo_paths()["china"], 224)[None]
    x = torch.nn.functional.interpolate(image, size=(224, 224)) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    with torch.no_grad():
        top = (
            efficientnet_lite0()(x / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)).topk(3).indices[0].tolist()
        )
    assert set(top) & {442, 497, 698}


def test_random_features_are_an_explicit_option_deterministic_multiscale_and_frozen():
    def random(seed: int) -> FeatureExtractor:
        return FeatureExtractor(FeatureConfig(network="random", random_seed=seed))

    a, b = random(3), random(3)
    x = torch.rand(2, 3, 32, 32)
    fa, fb = a(x), b(x)
    assert [f.shape[-1] for f in fa] == [32, 16, 8]
    assert all(torch.equal(p, q) for p, q in zip(fa, fb, strict=True))
    assert not torch.equal(random(4)(x)[0], fa[0])
    assert not a.shares_trunk_with_encoder
    with pytest.raises(ValueError, match="features.network"):
        FeatureConfig(network="resnet")
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

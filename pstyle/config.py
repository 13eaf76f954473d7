"""Typed configuration: one source of truth shared by the CLI, Ray jobs and Serve.

Every hyperparameter is declared once, here, with the reason it has its default. Configs
round-trip through JSON/YAML so checkpoints can carry exactly what rebuilds them.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


@dataclass
class ModelConfig:
    """Architecture of the generator's trained decoder, the discriminator and the segmenter.

    The content encoder and the style encoder are the frozen pretrained trunk (models/backbone.py):
    they have no width to choose.
    """

    channels: int = 24  # decoder width at 1/2 resolution; doubled at 1/4 and 1/8, x4 at 1/16
    res_blocks: int = 2  # style-modulated residual blocks at 1/16 resolution
    w_dim: int = 64  # width of w = mapping(style code), which drives every FiLM layer
    noise_dim: int = 16  # noise channels injected at 1/4 resolution (diverse outputs)
    disc_channels: int = 32  # discriminator width
    disc_layers: int = 3  # PatchGAN depth: receptive field grows with it
    segmenter_channels: int = 16  # small U-Net for subject masks on procedural scenes
    mask_feather: int = 7  # box-blur size (px) that feathers region masks; odd

    def __post_init__(self) -> None:
        if self.mask_feather % 2 != 1:
            raise ValueError(f"mask_feather must be odd, got {self.mask_feather}")
        if self.channels < 2:
            raise ValueError(f"channels must be at least 2, got {self.channels}")


@dataclass
class FeatureConfig:
    """Which frozen network measures content and style for the losses.

    `efficientnet_lite0` (default): the pretrained ImageNet trunk that ships as a pip package.
    `vgg19_weights` (a path or s3:// URI to a torchvision VGG19 state dict) switches to VGG19 for
    users who bring those weights. `network: random` is a fixed, seeded random conv net: an explicit
    option for experiments, never the default.
    """

    network: str = "efficientnet_lite0"  # or "random"; vgg19_weights overrides either
    vgg19_weights: str | None = None
    random_seed: int = 0  # seed of the random feature net: part of what a checkpoint records
    random_channels: int = 64

    def __post_init__(self) -> None:
        if self.network not in ("efficientnet_lite0", "random"):
            raise ValueError(f"features.network must be efficientnet_lite0 or random, got {self.network!r}")


@dataclass
class LossConfig:
    """Loss weights. Adversarial/R1 follow SNGAN/StyleGAN2-ADA; content/style/tv were set by looking
    at real photographs stylized by short runs (docs/benchmarks.md); Ray Tune searches them."""

    adversarial: float = 0.05  # the GAN term sharpens texture; longer runs paint it over the photo
    content: float = 1.0  # instance-normalised deep-feature distance to the content image
    structure: float = 30.0  # the same at the shallow taps (strides 2, 4): fine layout, edges (SSIM)
    style: float = 5.0  # channel mean/std distance to the style set's pretrained features
    code: float = 1.0  # re-encoding the output must give back the style code
    diversity: float = 0.5  # mode seeking: different noise, different outputs
    tv: float = 1.0  # total variation: no checkerboard or speckle
    r1_gamma: float = 1.0  # StyleGAN2-ADA uses 1 at 256 px; scale with resolution
    r1_every: int = 16  # lazy R1: penalise every k discriminator steps


@dataclass
class TrainConfig:
    """Optimisation of the base model (one process; Ray Train later scales the same loop)."""

    image_size: int = 128
    batch_size: int = 4  # content images per step; each is rendered with two noise draws
    style_images: int = 3  # K style images per sample that the encoder pools
    steps: int = 2000
    lr_g: float = 3e-4  # TTUR: the discriminator learns faster than the generator
    lr_d: float = 4e-4
    beta1: float = 0.0  # betas (0, 0.99) as in StyleGAN2-ADA
    beta2: float = 0.99
    seed: int = 0
    checkpoint_every: int = 200
    sample_every: int = 200
    log_every: int = 10
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    init_from: str | None = None  # "bundled" or a checkpoint folder: start from its weights (warm start)
    real_images: bool = True  # add the real photos and artworks that installed packages ship (data/photos.py)
    photo_fraction: float = 0.5  # share of content samples drawn from those photos


@dataclass
class PStyleConfig:
    """Everything needed to build and train a base model."""

    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PStyleConfig:
        return from_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: Path) -> None:
        path = Path(path)
        text = yaml.safe_dump(self.to_dict()) if path.suffix in (".yaml", ".yml") else self.to_json()
        path.write_text(text)

    @classmethod
    def load(cls, path: Path) -> PStyleConfig:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})

    def with_overrides(self, overrides: dict[str, Any]) -> PStyleConfig:
        """Apply dotted overrides like {"train.steps": 10}; unknown keys are errors, not no-ops."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if section not in data or key not in data[section]:
                raise KeyError(f"unknown config key {dotted!r}")
            data[section][key] = value
        return from_dict(PStyleConfig, data)


def cpu_preset(image_size: int = 64, steps: int = 100) -> PStyleConfig:
    """A narrow model and a large learning rate: a run that shows learning in minutes on 2 CPUs.

    Used by `pstyle demo` and the training test; clusters train the full default model.
    """
    model = ModelConfig(channels=16, res_blocks=1, w_dim=32, noise_dim=8, disc_channels=16)
    config = PStyleConfig(model=model)
    config.train.image_size = image_size
    config.train.steps = steps
    config.train.style_images = 3
    config.train.lr_g = config.train.lr_d = 1e-3
    config.train.checkpoint_every = config.train.sample_every = max(steps // 4, 1)
    return config


def warm_start_preset(image_size: int = 64, steps: int = 100) -> PStyleConfig:
    """Fine-tuning from the bundled base: its architecture and loss weights, a gentler learning rate.

    Used by `pstyle demo`, so minutes of training on 2 CPUs start from a model that already does
    real style transfer instead of from noise.
    """
    from pstyle.bundled import bundled_model_dir
    from pstyle.checkpoint import read_meta

    config = PStyleConfig.from_dict(read_meta(bundled_model_dir())["config"])
    config.train.init_from = "bundled"
    config.train.image_size = image_size
    config.train.steps = steps
    config.train.lr_g, config.train.lr_d = 1e-4, 2e-4
    config.train.checkpoint_every = config.train.sample_every = max(steps // 4, 1)
    return config


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass `cls` from plain data, recursing into nested dataclasses.

    Unknown keys raise: a typo in a config file must not silently fall back to a default.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise KeyError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        elif hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif _is_optional_str(hint) and value is not None:
            value = str(value)
        kwargs[name] = value
    return cls(**kwargs)


def _is_optional_str(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and set(hint.__args__) == {str, type(None)}


@dataclass
class ServeConfig:
    """What a serving replica needs; `serve/config.yaml` passes it as `user_config`, so every field
    can change at run time (`serve deploy` again) without restarting replicas."""

    store: str | None = None  # folder or s3://bucket/prefix; None: $PSTYLE_STORE or ~/.pstyle
    base: str = "base"  # base model name in the registry (what train-base --ray and tune publish)
    base_ref: str = "production"  # alias or version of that base
    adapter_alias: str = "production"  # which adapter version a user gets outside experiments
    alias_ttl_s: float = 10.0  # how stale an alias resolution may be: new versions/rollbacks land within it
    device_cache_bytes: int = 64 * 2**20  # adapters resident on the device (AdapterBank slots)
    host_cache_bytes: int = 2 * 2**30  # spilled adapters in host memory (10,000 rank-8 need ~1.7 GiB)
    shards: int = 64  # users hash into shards; a shard is the multiplexed id, for adapter locality
    multiplex_by: str = "shard"  # or "user": Serve's per-model-id batching (one user per batch), to compare
    size: int = 128  # default output shorter side
    max_size: int = 512
    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = 25_000_000  # decoded-pixel cap (decompression bombs), checked before decoding
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.01
    event_flush_s: float = 2.0
    # Adapter-path rule per device type ("cpu", "cuda"): the largest share of distinct adapters in a
    # batch served by the grouped path. {} keeps the built-in rule; set it to the
    # `measured_threshold.grouped_max_fraction` that `pstyle bench adapters` prints on your hardware.
    grouped_max_fraction: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for device_type, fraction in self.grouped_max_fraction.items():
            if not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
                raise ValueError(f"grouped_max_fraction[{device_type!r}] must be in [0, 1], got {fraction}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        return from_dict(cls, data)

"""Typed configuration: one source of truth shared by the CLI, Ray jobs and Serve.

Every setting is declared once, here, with the reason it has its default: the base model and its
training (`PStyleConfig`), a user's adapter and its fine-tuning (`AdapterConfig`,
`PersonalizeConfig`), a hyperparameter search (`TuneConfig`), a serving replica (`ServeConfig`) and
the demo's stage sizes (`DemoPlan`). They share one load/save/override helper, `ConfigFile`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pstyle.ids import validate_id

T = TypeVar("T")
C = TypeVar("C", bound="ConfigFile")


class ConfigFile:
    """The one to_dict/from_dict/load/save/with_overrides that every typed config shares.

    Configs round-trip through JSON/YAML (checkpoints and job specs carry exactly what rebuilds
    them), and dotted overrides (`--set train.steps=10`) reach any nested field; unknown keys are
    errors, never silently ignored.
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        return from_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: Path) -> None:
        path = Path(path)
        text = yaml.safe_dump(self.to_dict()) if path.suffix in (".yaml", ".yml") else self.to_json()
        path.write_text(text)

    @classmethod
    def load(cls: type[C], path: Path) -> C:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})

    def with_overrides(self: C, overrides: dict[str, Any]) -> C:
        """Apply dotted overrides like {"train.steps": 10} to a copy; unknown keys are KeyErrors."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            self._override(data, dotted, value)
        return type(self).from_dict(data)

    def _override(self, data: dict[str, Any], dotted: str, value: Any) -> None:
        *path, last = dotted.split(".")
        node = data
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node or not all(path + [last]):
            raise KeyError(f"unknown {type(self).__name__} key {dotted!r}")
        if isinstance(node[last], dict) and not isinstance(value, dict):
            raise ValueError(f"{dotted!r} is a section of {type(self).__name__}: set one of its keys")
        node[last] = value


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
class PStyleConfig(ConfigFile):
    """Everything needed to build and train a base model."""

    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


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


PERSONALIZE_POLICIES = ("promote", "experiment", "manual")  # see pstyle.serving.personalize_jobs


@dataclass
class ServeConfig(ConfigFile):
    """What a serving replica needs; `serve/config.yaml` passes it as `user_config`, so every field
    can change at run time (`serve deploy` again) without restarting replicas."""

    store: str | None = None  # folder or s3://bucket/prefix; None: $PSTYLE_STORE or ~/.pstyle
    base: str = "base"  # base model name in the registry (what train-base --ray and tune publish)
    base_ref: str = "production"  # alias or version of that base
    adapter_alias: str = "production"  # which adapter version a user gets outside experiments
    alias_ttl_s: float = 10.0  # cached alias resolutions and style sets are re-read in the background:
    # new versions, rollbacks and new style sets land within it (pstyle.serving.stale_cache)
    auth_ttl_s: float = 1.0  # the same for API-key records: a revoked or rotated key stops working
    # within it; 0 re-reads the record on every request
    stale_if_error_s: float = 300.0  # while the store is unreachable, cached aliases, style sets, key
    # records and experiments keep serving for this long since their last good read
    device_cache_bytes: int = 64 * 2**20  # adapters resident on the device (AdapterBank slots)
    host_cache_bytes: int = 2 * 2**30  # spilled adapters in host memory (thousands of rank-8 adapters)
    shards: int = 64  # users hash into shards; a shard is the multiplexed id, for adapter locality
    multiplex_by: str = "shard"  # or "user": Serve's per-model-id batching (one user per batch), to compare
    size: int = 128  # default output shorter side
    max_size: int = 512
    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = 25_000_000  # decoded-pixel cap (decompression bombs), checked before decoding
    large_upload_bytes: int = 2**20  # uploads above this decode at most `large_decodes` at a time per
    large_decodes: int = 1  # ingress replica, so large files cannot take every core from small requests
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.01
    event_flush_s: float = 2.0
    event_spool: bool = True  # a write-ahead copy of buffered events on the node's disk: a killed
    # ingress's events are written by its replacement on that node (pstyle.store.event_spool)
    style_size: int = 256  # side at which style images are encoded for zero-shot renders
    code_cache_entries: int = 10_000  # zero-shot style codes kept per replica: (user, set digest) -> code
    keep_outputs: bool = True  # store returned images, so a rating can later train on the image rated
    num_gpus: float = 0.0  # per generator replica (fractional shares a GPU); read at deploy time
    # Personalization on request (POST /v1/me/personalize): one adapter job per user, on Ray.
    personalize: PersonalizeConfig = field(default_factory=lambda: PersonalizeConfig())  # the recipe
    personalize_content: int = 32  # procedural content scenes each job trains on
    personalize_cpus: float = 1.0  # CPUs of the job's Ray Data actor
    personalize_gpus: float | None = None  # its GPUs; None: one when the cluster has any (AdapterJobConfig)
    max_personalize_jobs: int = 8  # live jobs (queued + running); beyond it POST answers 429
    max_running_personalize_jobs: int = 1
    after_personalize: str = "promote"  # promote | experiment | manual (pstyle.serving.personalize_jobs)
    promote_margin: float = 0.05  # relative held-out style-distance gain that `promote` requires
    # Adapter-path rule per device type ("cpu", "cuda"): the largest share of distinct adapters in a
    # batch served by the grouped path. {} keeps the built-in rule; set it to the
    # `measured_threshold.grouped_max_fraction` that `pstyle bench adapters` prints on your hardware.
    grouped_max_fraction: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.after_personalize not in PERSONALIZE_POLICIES:
            policies = ", ".join(PERSONALIZE_POLICIES)
            raise ValueError(f"after_personalize must be one of {policies}, got {self.after_personalize!r}")
        for device_type, fraction in self.grouped_max_fraction.items():
            if not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
                raise ValueError(f"grouped_max_fraction[{device_type!r}] must be in [0, 1], got {fraction}")


# Glob patterns over `Generator.named_modules()` names: where an adapter has the most effect per byte.
# Style enters the decoder through its FiLM affines (per-channel scale and shift at every stage) and is
# rendered into texture by the decoder's convolutions at 1/8 to full resolution, the 1x1 conv that
# turns noise into grain, and the output conv that sets the colours.
# Left out: the frozen pretrained trunk (shared perception, never personalised); the 1/16-resolution
# bottom and residual blocks (the widest layers: without them a rank-8 adapter stays small, see
# `pstyle bench adapters`, and AdaIN there already imposes the user's code);
# and the mapping network (w = mapping(code) is one vector per user, and the adapter's learned style
# code already moves it). Each is one pattern away (e.g. "blocks.*.conv") when a larger adapter is fine.
DEFAULT_TARGETS: tuple[str, ...] = (
    "up*.film.affine",
    "up*.conv*.conv",
    "up1.conv",
    "inject_noise",
    "to_rgb",
)


@dataclass
class AdapterConfig(ConfigFile):
    """A low-rank adapter over the frozen generator (LoRA for Linear, LoCon for Conv2d)."""

    rank: int = 8  # r: inner width of every down/up pair; size and capacity grow linearly with it
    alpha: float = 8.0  # delta scale is alpha / rank, so changing rank keeps the update's magnitude
    target_modules: tuple[str, ...] = DEFAULT_TARGETS  # fnmatch globs over generator module names
    dropout: float = 0.0  # on the adapter's input path, training only (few-shot users overfit)

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)  # JSON gives lists back
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one layer pattern")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


SCHEDULES = ("cosine", "constant")


@dataclass
class PersonalizeConfig(ConfigFile):
    """How one user's adapter is trained; the shared loss weights come from the base checkpoint."""

    steps: int = 300  # held-out gains still grow past 100 (docs/benchmarks.md, real-image style sets)
    lr: float = 5e-3  # JoJoGAN fine-tunes at 2e-3; zero-initialised low-rank updates take a larger step
    code_lr: float = 2e-2  # the style code is one vector steering every AdaIN at once: a larger step
    schedule: str = "cosine"  # "cosine": both learning rates decay to 0 at `steps`; or "constant"
    batch_size: int = 8
    holdout: int = 2  # style images kept out of training for early stopping and before/after metrics
    eval_every: int = 20
    eval_seeds: int = 2  # noise/patch seeds averaged by every held-out score: 2 held-out images are noisy
    patience: int = 3  # evaluations without improvement before stopping
    patch_swd: float = 10.0  # pixel-space patch SWD to the training style images (the metric's statistic)
    sliced_wasserstein: float = 100.0  # distribution-level texture term on top of the base's Gram term
    feedback: float = 1.0  # weight of the rating-driven terms
    feedback_margin: float = 0.1  # disliked outputs must be this much (relatively) farther than the style
    l2: float = 1e-3  # on adapter weights (not the style code)
    base_consistency: float = 0.1  # MSE to the base model's output for the same code and noise
    ssim_budget: float = 0.04  # content SSIM an output may lose against the base's zero-shot output
    ssim_penalty: float = 1e4  # per unit of SSIM lost beyond the budget: a wall, not a trade-off
    seed: int = 0
    adapter: AdapterConfig = field(default_factory=AdapterConfig)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.eval_seeds < 1:
            raise ValueError(f"eval_seeds must be >= 1, got {self.eval_seeds}")


def flag(default: Any, help: str) -> Any:
    """A job setting that is also a command-line flag (`--field-name`): its help lives beside it, so
    `pstyle ... --ray` and `ray_jobs/*.py` build the same flags from this one definition."""
    return field(default=default, metadata={"help": help})


STORE_WHAT = "artifact store: a folder or s3://bucket/prefix"
STORE_HELP = f"{STORE_WHAT} [$PSTYLE_STORE, else ~/.pstyle]"
RAY_ADDRESS_HELP = "'local' (a private Ray here) or a cluster address [RAY_ADDRESS, a running one, else new]"


SEARCHERS = ("optuna", "random")
SCHEDULERS = ("asha", "none")


@dataclass
class Param:
    """One searched hyperparameter: a float/int range (optionally log-scaled) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False  # sample log-uniformly: learning rates and loss weights span decades
    integer: bool = False
    choices: list[Any] | None = None

    def __post_init__(self) -> None:
        # YAML 1.1 reads `5e-5` (no dot) as a string: accept it as the number it plainly is.
        self.low, self.high = (float(v) if isinstance(v, str) else v for v in (self.low, self.high))
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("a choice parameter needs a non-empty `choices` list and no low/high")
            return
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a range parameter needs low < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scaled range needs low > 0, got {self.low}")


def default_space() -> dict[str, Param]:
    """The default search space; ranges bracket the literature values noted in `pstyle.config`."""
    return {
        # TTUR: separate generator and discriminator learning rates (SAGAN: 1e-4 / 4e-4).
        "train.lr_g": Param(5e-5, 2e-3, log=True),
        "train.lr_d": Param(1e-4, 4e-3, log=True),
        # Adam betas: (0, 0.99) StyleGAN2-ADA, (0, 0.9) SNGAN, (0.5, 0.999) DCGAN-style.
        "train.beta1": Param(choices=[0.0, 0.5]),
        "train.beta2": Param(choices=[0.9, 0.99]),
        # Loss weights, log-scaled a decade either side of the defaults in `pstyle.config.LossConfig`.
        "loss.adversarial": Param(0.005, 0.5, log=True),
        "loss.content": Param(0.1, 10.0, log=True),
        "loss.structure": Param(3.0, 300.0, log=True),
        "loss.style": Param(0.5, 50.0, log=True),
        "loss.tv": Param(0.1, 10.0, log=True),
        "loss.diversity": Param(0.0, 1.0),
        # R1: 0.01 (CIFAR) .. 10 (StyleGAN2-ADA default) .. 1 at 256 px.
        "loss.r1_gamma": Param(0.01, 10.0, log=True),
        "model.channels": Param(choices=[8, 16, 24, 32]),
        "model.res_blocks": Param(choices=[1, 2, 4]),
        "model.w_dim": Param(choices=[16, 32, 64]),
        "train.batch_size": Param(choices=[4, 8]),
    }


def default_base() -> PStyleConfig:
    """The config trials start from: the CPU preset at 64 px (a trial must fit in minutes on a CPU)."""
    return cpu_preset(64)


@dataclass
class TuneConfig(ConfigFile):
    """Settings of one Ray Tune search (`pstyle tune`, `ray_jobs/tune_base.py`, `pstyle bench tune`).

    Objectives: `swd` (SWD to held-out style images, x1e3, minimised) and `ssim` (content SSIM,
    maximised). ASHA needs one number, the scalarised `score` (see `pstyle.distributed.tune_results.score`):
        score = swd / swd_identity + ssim_weight * (1 - ssim)        (lower is better)
    where swd_identity is the SWD of returning the content unchanged (so 1.0 = no better than doing
    nothing, whatever the data) and 1 - ssim is the lost content structure.
    """

    name: str = flag("tune-base", "experiment name; the same name again resumes the experiment")
    store: str | None = flag(None, STORE_HELP)
    data: str | None = flag(None, "dataset folder visible to every node [synthetic data, made per node]")
    model_name: str = flag("base", "registry name the chosen checkpoint is published under (alias candidate)")

    search: str = flag("optuna", "optuna: multi-objective TPE over (swd, ssim); random: seeded sampling")
    scheduler: str = flag("asha", "asha: early-stop on the score; none: every trial runs all iterations")
    num_samples: int = flag(16, "trials")
    iterations: int = flag(10, "reports per trial (ASHA's max_t): steps_per_iteration steps + an evaluation")
    steps_per_iteration: int = flag(20, "training steps per report")
    checkpoint_every: int = 1  # checkpoint every k iterations (and always at the last one)
    # ASHA: iterations every trial gets before it can be stopped; at 20 steps an iteration, trial
    # ranks settle by the 3rd (rank correlations in docs/benchmarks.md).
    grace_period: int = 3
    reduction_factor: int = 3  # ASHA: keep the best 1/3 at each rung
    ssim_weight: float = 0.5  # in `score`: a 0.1 SSIM gain is worth 5 % of identity's SWD
    eval_users: int = 4  # users (held-out style images) and content images scored per evaluation
    eval_content: int = 8

    cpus_per_trial: float = flag(1.0, "CPUs per trial")
    gpus_per_trial: float = flag(0.0, "GPUs per trial; fractions such as 0.25 pack small trials on one GPU")
    max_concurrent_trials: int = flag(0, "0: derived from the cluster's CPUs/GPUs and the per-trial request")
    autoscale: bool = flag(
        False, "autoscaling cluster: submit every trial at once (pending trials ask for nodes), no fit check"
    )
    max_failures: int = flag(2, "retries of a failed trial, from its last checkpoint")
    seed: int = flag(0, "searcher seed; every trial trains with base.train.seed (a fair comparison)")
    ray_address: str | None = flag(None, RAY_ADDRESS_HELP)

    synth_content: int = 16  # size of the synthetic dataset used when `data` is None
    synth_users: int = 10
    synth_images_per_user: int = 5

    # Fault injection for tests: every trial raises once when it reaches this iteration (0 = off).
    fail_at_iteration: int = 0

    base: PStyleConfig = field(default_factory=default_base)
    space: dict[str, Param] = field(default_factory=default_space)

    def __post_init__(self) -> None:
        validate_id(self.name, "experiment name")
        validate_id(self.model_name, "base model name")
        if self.search not in SEARCHERS:
            raise ValueError(f"search must be one of {SEARCHERS}, got {self.search!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        for name in ("num_samples", "iterations", "steps_per_iteration", "checkpoint_every", "grace_period"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.reduction_factor < 2:
            raise ValueError(f"reduction_factor must be at least 2, got {self.reduction_factor}")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ValueError("cpus_per_trial must be > 0 and gpus_per_trial >= 0")
        self.space = {
            key: p if isinstance(p, Param) else from_dict(Param, p) for key, p in self.space.items()
        }
        for key, param in self.space.items():  # each key must name a real config field
            sample = param.choices[0] if param.choices is not None else param.low
            self.base.with_overrides({key: sample})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuneConfig:
        """`base` is merged onto the default base config (a file names only what it changes);
        `space`, when given, replaces the default space (it is a set: say exactly what to search)."""
        data = dict(data)
        base = data.pop("base", None) or {}
        data["base"] = PStyleConfig.from_dict(_deep_merge(default_base().to_dict(), base))
        return from_dict(cls, data)

    def _override(self, data: dict[str, Any], dotted: str, value: Any) -> None:
        """`space.train.lr_g` sets a Param mapping (None stops searching that key); the rest,
        `iterations` or `base.train.image_size`, are ordinary dotted keys."""
        head, _, key = dotted.partition(".")
        if head != "space" or not key:
            super()._override(data, dotted, value)
        elif value is None:
            data["space"].pop(key, None)
        else:
            data["space"][key] = value

    # ---- what trials run ------------------------------------------------------------------------

    def trial_config(self, params: dict[str, Any]) -> PStyleConfig:
        """The full model/training config of a trial: base + sampled values, with the steps it runs."""
        config = self.base.with_overrides(params)
        config.train.steps = self.iterations * self.steps_per_iteration
        return config


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


EXPORT_FORMATS = ("int8", "pruned", "compiled", "onnx")


# Calibration style sets are 4 tiles of this side cut from each shipped style photo, the smallest
# of which is 640 x 427 (`pstyle.data.photos.real_style_users`).
MAX_CALIBRATION_SIZE = 208


@dataclass
class ExportConfig(ConfigFile):
    """How `pstyle export` turns a base checkpoint into a serving variant (pstyle.training.variants)."""

    format: str = flag("int8", "int8 | pruned | compiled | onnx")
    channels: int = flag(
        12, "pruned: the decoder width kept (the base's ModelConfig.channels is the full width)"
    )
    distill_steps: int = flag(1200, "pruned: fine-tune steps matching the full generator's outputs")
    distill_lr: float = flag(3e-4, "pruned: Adam learning rate of that fine-tune")
    distill_pairs: int = flag(1200, "pruned: distinct (content, style code) pairs that fine-tune cycles over")
    calibration_batches: int = flag(8, "batches of real and procedural content that calibrate or rank")
    batch: int = flag(4, "images per calibration and fine-tune batch")
    size: int = flag(128, "side of those images (px)")
    seed: int = flag(0, "seeds the content crops, scenes, noise and style pairing")

    def __post_init__(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {self.format!r}")
        if (
            self.channels < 2 or self.distill_steps < 0 or self.distill_pairs < 1
            or self.calibration_batches < 1 or self.batch < 1
        ):  # fmt: skip
            raise ValueError(
                "channels >= 2, distill_steps >= 0, distill_pairs >= 1, calibration_batches >= 1 "
                "and batch >= 1"
            )
        if self.size < 32 or self.size % 16 or self.size > MAX_CALIBRATION_SIZE:
            raise ValueError(
                f"size must be a multiple of 16 from 32 to {MAX_CALIBRATION_SIZE}, got {self.size}"
            )


TUXPAINT_STAMPS = "/usr/share/tuxpaint/stamps"  # Debian: tuxpaint-stamps-default
# Debian: gnome-backgrounds, plasma-workspace-wallpapers, ukui-wallpapers
WALLPAPER_DIRS = ("/usr/share/backgrounds", "/usr/share/wallpapers")


@dataclass
class SubjectTrainConfig(ConfigFile):
    """How `pstyle train-subjects` trains the subject head on cutouts pasted onto backgrounds."""

    cutouts: str = flag(TUXPAINT_STAMPS, "folder of RGBA PNG object cutouts (recursive)")
    backgrounds: str = flag(",".join(WALLPAPER_DIRS), "comma-separated folders of background images")
    steps: int = flag(1200, "optimizer steps (cosine-decayed learning rate)")
    batch: int = flag(16, "composites per step")
    size: int = flag(224, "side of each composite (px)")
    lr: float = flag(2e-3, "AdamW learning rate of the decoder")
    holdout: float = flag(0.15, "share of the cutouts kept out of training for the reported IoU")
    seed: int = flag(0, "seeds the cutout split, the composites and the decoder's initialisation")

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.size < 32 or self.lr <= 0:
            raise ValueError("steps >= 1, batch >= 1, size >= 32 and lr > 0")
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")


MAX_DEMO_USERS = 12  # the demo searches 2**demo_users experiment names for a fixed A/B split


@dataclass
class DemoPlan(ConfigFile):
    """How big each stage is: the full demo and the `--tiny` one the tests run."""

    image_size: int = 64
    n_content: int = 32
    n_users: int = 8  # synthetic style users
    images_per_user: int = 6
    demo_users: int = 4  # users who get adapters and send traffic
    tune_trials: int = 6
    tune_iterations: int = 3
    tune_steps: int = 8  # steps per Tune iteration
    base_steps: int = 150  # fine-tuning the bundled base: it already transfers style
    workers: int = 2  # Ray Train workers (base) and Ray Data actors (adapters)
    adapter_steps: int = 40  # production adapters
    candidate_steps: int = 80  # candidate adapters (the A/B treatment)
    requests: int = 6  # per user, before the experiment
    ab_requests: int = 16  # per cohort user, during the experiment: 2 users x 16 = 32 ratings per arm

    def __post_init__(self) -> None:
        if not 2 <= self.demo_users <= min(self.n_users, MAX_DEMO_USERS):
            raise ValueError(
                f"demo_users must be from 2 to {MAX_DEMO_USERS} and at most n_users ({self.n_users}), "
                f"got {self.demo_users}: the A/B test splits them between two arms"
            )

    @classmethod
    def tiny(cls) -> DemoPlan:
        return cls(image_size=32, n_content=8, n_users=4, images_per_user=5, demo_users=3, tune_trials=2,
                   tune_iterations=2, tune_steps=2, base_steps=4, adapter_steps=3, candidate_steps=4,
                   requests=2, ab_requests=3)  # fmt: skip


@dataclass
class TrainJob(ConfigFile):
    """Where and how a base-training run executes on Ray Train (the model itself is a PStyleConfig)."""

    data: str = flag("", "dataset folder that every worker loads (small sets; or the streamed input below)")
    content: str = flag("", "content photos streamed by Ray Data: a folder or s3:// prefix")
    styles: str = flag(
        "", "style images streamed by Ray Data, each a style set of its crops: folder or s3://"
    )
    scenes: int = flag(0, "procedural content scenes (with subject masks), a Ray Data source")
    style_users: int = flag(0, "procedural style users, a Ray Data source")
    store: str | None = flag(None, STORE_HELP)
    name: str = flag("train-base", "run name; the same name and store again resumes the run")
    model_name: str = flag("base", "registry name the result is published under (alias candidate)")
    workers: int = flag(2, "Ray Train workers")
    gpu: bool = flag(False, "one GPU per worker (NCCL instead of gloo)")
    cpus_per_worker: float = flag(1.0, "CPUs (torch threads) per worker")
    max_failures: int = flag(2, "worker-group restarts from the last checkpoint")
    ray_address: str | None = flag(None, RAY_ADDRESS_HELP)
    out: str | None = flag(None, "also copy the final checkpoint to this folder")
    trace_dir: str | None = flag(None, "workers' pids and rank 0's per-step log (tests, debugging)")

    def __post_init__(self) -> None:
        validate_id(self.name, "run name")
        validate_id(self.model_name, "base model name")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.scenes < 0 or self.style_users < 0:
            raise ValueError(f"scenes and style_users must be >= 0, got {self.scenes} and {self.style_users}")
        if self.streamed:
            if self.data:
                raise ValueError("give --data (loaded by every worker) or streamed input, not both")
            if not (self.content or self.scenes) or not (self.styles or self.style_users):
                raise ValueError(
                    "streamed input needs content (--content or --scenes) "
                    "and styles (--styles or --style-users)"
                )

    @property
    def streamed(self) -> bool:
        """Input comes through Ray Data (any size, local or S3) rather than a folder each worker loads."""
        return bool(self.content or self.styles or self.scenes or self.style_users)


@dataclass
class AdapterJobConfig(ConfigFile):
    """Which users' adapters a Ray Data job fine-tunes, on which base (the recipe: PersonalizeConfig)."""

    users: str = flag("", "a user manifest (store key or local JSON/YAML) or a folder <dir>/<user>/*.png")
    base: str = flag("base@production", "the base in the registry: NAME[@alias|version]")
    store: str | None = flag(None, STORE_HELP)
    name: str | None = flag(None, "job name [adapters-<time>]; the same name again skips users done")
    workers: int = flag(1, "Ray Data actors training users (each loads the base once)")
    cpus_per_worker: float = flag(1.0, "CPUs (torch threads) per actor")
    gpus_per_worker: float | None = flag(
        None, "GPUs per actor (fractions share a GPU; 0: CPU only) [the cluster's GPUs, at most 1 each]"
    )
    group_size: int = flag(2, "users trained together in one batched forward (and sent to an actor at once)")
    forward: str = flag("grouped", "one pass per user (grouped) or per-sample adapters (mixed)")
    n_content: int = flag(32, "procedural content scenes each adapter trains on")
    user_retries: int = flag(2, "tries of a user after a failed one (alone), then it is recorded as failed")
    ray_address: str | None = flag(None, RAY_ADDRESS_HELP)
    summary: str | None = flag(None, "also write the job summary JSON here")

    def __post_init__(self) -> None:
        if self.name is not None:
            validate_id(self.name, "job name")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.user_retries < 0:
            raise ValueError(f"user_retries must be >= 0, got {self.user_retries}")
        if self.forward not in ("grouped", "mixed"):
            raise ValueError(f"forward must be grouped or mixed, got {self.forward!r}")


@dataclass
class DecideConfig(ConfigFile):
    """When `pstyle ab decide` promotes a production-vs-candidate experiment's candidate, rolls it back
    or lets it run (`pstyle.serving.decisions`: alpha spending over repeated looks, guardrails)."""

    alpha: float = flag(0.05, "two-sided false-decision rate over all looks at one experiment")
    min_ratings: int = flag(30, "ratings on each arm before the first look")
    planned_ratings: int = flag(400, "ratings per arm at the final look; information = smaller arm / this")
    min_exposures: int = flag(200, "exposures on each arm before guardrails are judged (and promotion)")
    error_margin: float = flag(0.01, "candidate error rate may exceed production's by this (0.01: 1 point)")
    p99_margin: float = flag(0.2, "candidate p99 latency may exceed production's by this fraction")

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 2 <= self.min_ratings <= self.planned_ratings:
            raise ValueError(
                f"need 2 <= min_ratings <= planned_ratings, got {self.min_ratings} and {self.planned_ratings}"
            )
        if self.min_exposures < 1 or self.error_margin < 0 or self.p99_margin < 0:
            raise ValueError("min_exposures must be >= 1 and the guardrail margins >= 0")


@dataclass
class LoopConfig(ConfigFile):
    """One run of the feedback loop (`pstyle loop run`, `ray_jobs/retrain_from_feedback.py`): new
    ratings -> retrained adapters (the recipe: `personalize`) -> an A/B experiment -> decisions
    (`decide`)."""

    store: str | None = flag(None, STORE_HELP)
    base: str = flag("base@production", "the base adapters train on: NAME[@alias|version]")
    min_new_ratings: int = flag(5, "retrain a user who gave this many ratings since their last retrain")
    settle_s: float = flag(600.0, "leave events younger than this to the next run (replicas flush late)")
    experiment_prefix: str = flag("loop", "loop experiments are <prefix>-<UTC time>; a running one grows")
    workers: int = flag(1, "Ray Data actors of the adapter job")
    ray_address: str | None = flag(None, RAY_ADDRESS_HELP)
    personalize: PersonalizeConfig = field(default_factory=PersonalizeConfig)
    decide: DecideConfig = field(default_factory=DecideConfig)

    def __post_init__(self) -> None:
        validate_id(self.experiment_prefix, "experiment prefix")
        if self.min_new_ratings < 1 or self.workers < 1 or self.settle_s < 0:
            raise ValueError("min_new_ratings and workers must be >= 1 and settle_s >= 0")


def flag_fields(cls: type) -> list[tuple[str, type, str]]:
    """(field name, scalar type, help) of every `flag(...)` field of config class `cls`."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "help" in f.metadata:
            hint = hints[f.name]
            scalar = next(a for a in hint.__args__ if a is not type(None)) if _is_optional(hint) else hint
            out.append((f.name, scalar, f.metadata["help"]))
    return out


def _is_optional(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and type(None) in hint.__args__


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (from `--set`) as {dotted key: value}, each value read as YAML."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        parsed[key] = yaml.safe_load(value)
    return parsed

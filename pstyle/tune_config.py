"""What a hyperparameter search runs: the typed settings of `pstyle tune` and its search space.

One dataclass, loadable from YAML/JSON (`--config`) and overridable by flags or `--set key=value`,
shared by the CLI, the `ray_jobs/tune_base.py` job and the benchmark. Nothing here imports Ray;
`ray_space()` builds Ray Tune domains lazily.

A search-space entry names a dotted `PStyleConfig` key (the same keys as `pstyle ... --set`) and a
distribution; a trial's configuration is the `base` config with the sampled values applied.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pstyle.config import PStyleConfig, cpu_preset, from_dict
from pstyle.ids import validate_id

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

    def domain(self) -> Any:
        """The Ray Tune sampling domain (Optuna's searcher converts these to its distributions)."""
        from ray import tune

        if self.choices is not None:
            return tune.choice(list(self.choices))
        if self.integer:
            low, high = int(self.low), int(self.high) + 1  # Tune's randint excludes the upper bound
            return tune.lograndint(low, high) if self.log else tune.randint(low, high)
        return tune.loguniform(self.low, self.high) if self.log else tune.uniform(self.low, self.high)


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
class TuneConfig:
    """Settings of one Ray Tune search (`pstyle tune`, `ray_jobs/tune_base.py`, `pstyle bench tune`).

    Objectives: `swd` (SWD to held-out style images, x1e3, minimised) and `ssim` (content SSIM,
    maximised). ASHA needs one number, the scalarised `score` (see `pstyle.tuning_results.score`):
        score = swd / swd_identity + ssim_weight * (1 - ssim)        (lower is better)
    where swd_identity is the SWD of returning the content unchanged (so 1.0 = no better than doing
    nothing, whatever the data) and 1 - ssim is the lost content structure.
    """

    name: str = "tune-base"  # experiment name: resubmitting the same name resumes the experiment
    store: str | None = (
        None  # artifact store (folder or s3://bucket/prefix); None: $PSTYLE_STORE or ~/.pstyle
    )
    data: str | None = None  # dataset folder visible to every node; None: synthetic data made per node
    model_name: str = "base"  # registry name the chosen checkpoint is published under (alias `candidate`)

    search: str = "optuna"  # optuna: multi-objective TPE over (swd, ssim); random: seeded random sampling
    scheduler: str = "asha"  # asha: early-stop on `score`; none: every trial runs all iterations
    num_samples: int = 16  # trials
    iterations: int = 10  # reports per trial (ASHA's max_t): one = steps_per_iteration steps + eval
    steps_per_iteration: int = 20
    checkpoint_every: int = 1  # checkpoint every k iterations (and always at the last one)
    # ASHA: iterations every trial gets before it can be stopped. At 20 steps an iteration, ranks
    # settle by the 3rd (Spearman to the final score -0.08, 0.21, 0.45 at 1, 2, 3: docs/benchmarks.md).
    grace_period: int = 3
    reduction_factor: int = 3  # ASHA: keep the best 1/3 at each rung
    ssim_weight: float = 0.5  # in `score`: a 0.1 SSIM gain is worth 5 % of identity's SWD
    eval_users: int = 4  # users (held-out style images) and content images scored per evaluation
    eval_content: int = 8

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractional GPUs pack several small trials on one device
    max_concurrent_trials: int = 0  # 0: derived from the cluster's CPUs/GPUs and the per-trial request
    max_failures: int = 2  # retries of a failed trial, from its last checkpoint (FailureConfig)
    seed: int = 0  # searcher seed; every trial also trains with base.train.seed (a fair comparison)

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

    # ---- (de)serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuneConfig:
        """`base` is merged onto the default base config (a file names only what it changes);
        `space`, when given, replaces the default space (it is a set: say exactly what to search)."""
        data = dict(data)
        base = data.pop("base", None) or {}
        data["base"] = PStyleConfig.from_dict(_deep_merge(default_base().to_dict(), base))
        return from_dict(cls, data)

    @classmethod
    def load(cls, path: Path) -> TuneConfig:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})

    def save(self, path: Path) -> None:
        path = Path(path)
        data = self.to_dict()
        path.write_text(
            yaml.safe_dump(data) if path.suffix in (".yaml", ".yml") else json.dumps(data, indent=2)
        )

    def with_overrides(self, overrides: dict[str, Any]) -> TuneConfig:
        """Dotted overrides: `iterations`, `base.train.image_size`, `space.train.lr_g` (a Param
        mapping, or None to stop searching that key). Unknown keys are errors."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            head, _, rest = dotted.partition(".")
            if head == "base" and rest:
                data["base"] = PStyleConfig.from_dict(data["base"]).with_overrides({rest: value}).to_dict()
            elif head == "space" and rest:
                if value is None:
                    data["space"].pop(rest, None)
                else:
                    data["space"][rest] = value
            elif head in data and head not in ("base", "space") and not rest:
                data[head] = value
            else:
                raise KeyError(f"unknown tune config key {dotted!r}")
        return TuneConfig.from_dict(data)

    # ---- what trials run ------------------------------------------------------------------------

    def trial_config(self, params: dict[str, Any]) -> PStyleConfig:
        """The full model/training config of a trial: base + sampled values, with the steps it runs."""
        config = self.base.with_overrides(params)
        config.train.steps = self.iterations * self.steps_per_iteration
        return config

    def ray_space(self) -> dict[str, Any]:
        """Tune's `param_space`: one domain per dotted key (flat, so results tables name the key)."""
        return {key: param.domain() for key, param in self.space.items()}


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out

"""Base-model training on one process (CPU or CUDA): resumable, with progress and sample grids.

Ray Train runs the same `BaseTrainer.step` inside its workers; this module knows nothing of Ray.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from pstyle.config import PStyleConfig
from pstyle.data.augment import augment
from pstyle.data.folders import ContentFolder, StyleUsers
from pstyle.images import save_image
from pstyle.models.features import FeatureExtractor
from pstyle.models.style_model import StyleModel
from pstyle.training.checkpoint import load_checkpoint, load_train_state, read_meta, save_checkpoint
from pstyle.training.objective import Batch, discriminator_phase, generator_phase, segmenter_phase

HOLDOUT_PER_USER = 2  # style images per user kept out of training, for honest evaluation


def initial_weights(config: PStyleConfig) -> StyleModel:
    """The checkpoint `train.init_from` names ("bundled" or a folder), checked to be this architecture."""
    from pstyle.training.bundled import resolve_model_dir

    source = config.train.init_from
    model, meta = load_checkpoint(resolve_model_dir(None if source == "bundled" else Path(source)))
    if PStyleConfig.from_dict(meta["config"]).model != config.model:
        raise ValueError(f"train.init_from={source!r} has another architecture than model: {config.model}")
    return model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TrainingData:
    """Pairs content images with style sets: procedural scenes and users from a `pstyle data synth`
    folder, plus real images that are re-cropped for every sample: `photos` as content (an augmented
    crop) and `style_photos` (default: the photos) as styles (a set of crops of one image: one
    consistent look). Only each synthetic user's training split is used; held-out images stay
    unseen for evaluation. Everything is held in memory as tensors: these datasets are small.
    """

    def __init__(
        self,
        root: Path,
        image_size: int,
        seed: int = 0,
        photos: list[torch.Tensor] | None = None,
        style_photos: list[torch.Tensor] | None = None,
        photo_fraction: float = 0.5,
    ) -> None:
        root = Path(root)
        self.image_size = image_size
        content_dir = root / "content"
        has_masks = (content_dir / "masks").is_dir()
        content = ContentFolder(content_dir, image_size, with_masks=has_masks)
        items = [content[i] for i in range(len(content))]
        self.content = torch.stack([item["image"] for item in items])
        self.masks = torch.stack([item["mask"] for item in items]) if has_masks else None
        users = StyleUsers(root / "styles", image_size)
        self.user_ids = users.user_ids
        self.style_sets = [users.split(uid, holdout=HOLDOUT_PER_USER, seed=seed)[0] for uid in self.user_ids]
        self.photos = list(photos or [])
        self.style_photos = list(self.photos if style_photos is None else style_photos)
        self.photo_fraction = photo_fraction if self.photos else 0.0
        self.generator = torch.Generator().manual_seed(seed)

    def sample(
        self, batch_size: int, set_size: int, device: torch.device, generator: torch.Generator | None = None
    ) -> Batch:
        g = generator or self.generator
        size = self.image_size
        content, masks, valid, styles, real = [], [], [], [], []
        n_users = len(self.style_sets) + len(self.style_photos)
        for _ in range(batch_size):
            if torch.rand((), generator=g).item() < self.photo_fraction:
                photo = self.photos[int(torch.randint(len(self.photos), (), generator=g))]
                content.append(augment(photo, size, g))
                masks.append(torch.zeros(1, size, size))
                valid.append(False)
            else:
                i = int(torch.randint(len(self.content), (), generator=g))
                content.append(self.content[i])
                masks.append(self.masks[i] if self.masks is not None else torch.zeros(1, size, size))
                valid.append(self.masks is not None)
            user = int(torch.randint(n_users, (), generator=g))
            if user < len(self.style_sets):
                images = self.style_sets[user]
                pick = torch.randint(len(images), (set_size + 1,), generator=g)  # with replacement
                styles.append(images[pick[:set_size]])
                real.append(images[pick[set_size]])
            else:
                photo = self.style_photos[user - len(self.style_sets)]
                crops = torch.stack([augment(photo, size, g, jitter=False) for _ in range(set_size + 1)])
                styles.append(crops[:set_size])
                real.append(crops[set_size])
        has_masks = self.masks is not None  # a property of the dataset, so every Ray Train rank agrees
        return Batch(
            torch.stack(content).to(device),
            torch.stack(styles).to(device),
            torch.stack(real).to(device),
            torch.stack(masks).to(device) if has_masks else None,
            torch.tensor(valid, device=device) if has_masks else None,
        )


class BatchSource(Protocol):
    """What training draws batches from: `TrainingData`, or a Ray Train worker's streamed shards."""

    generator: torch.Generator | None  # the data stream a checkpoint saves; None: nothing to save

    def sample(self, batch_size: int, set_size: int, device: torch.device) -> Batch: ...


class BaseTrainer:
    """Owns the model, its optimizers and the loop; `step()` is one G, D (and segmenter) update."""

    def __init__(self, config: PStyleConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        seed_everything(config.train.seed)
        self.model = StyleModel(config.model).to(self.device)
        if config.train.init_from:
            self.model.load_state_dict(initial_weights(config).state_dict())
        self.features = FeatureExtractor(config.features).to(self.device)
        t = config.train
        betas = (t.beta1, t.beta2)
        g_params = [p for p in self.model.generator.parameters() if p.requires_grad]  # the trunk is frozen
        # Lazy R1 (StyleGAN2-ADA): D's lr and betas shrink by k/(k+1) to keep the same effective step.
        ratio = config.loss.r1_every / (config.loss.r1_every + 1)
        self.opt_g = torch.optim.Adam(g_params, lr=t.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(
            self.model.discriminator.parameters(), lr=t.lr_d * ratio, betas=(t.beta1**ratio, t.beta2**ratio)
        )
        self.opt_s = torch.optim.Adam(self.model.segmenter.parameters(), lr=1e-3)
        self.step_count = 0
        # Data-parallel training (pstyle.distributed.train) averages gradients across workers here, between
        # backward and the optimizer step; None on one process.
        self.sync_gradients: Callable[[torch.optim.Optimizer], None] | None = None

    def autocast(self) -> torch.autocast | nullcontext:
        """bf16 autocast on CUDA (no loss scaling needed); full precision on CPU."""
        if self.device.type == "cuda" and self.config.train.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def step(self, batch: Batch) -> dict[str, float]:
        """One update of D, then G (+ encoder), then the segmenter when masks are present."""
        loss_cfg = self.config.loss
        regularize = self.step_count % loss_cfg.r1_every == 0
        logs = {}
        for opt, phase in (
            (self.opt_d, lambda: discriminator_phase(self.model, batch, loss_cfg, regularize)),
            (self.opt_g, lambda: generator_phase(self.model, self.features, batch, loss_cfg)),
        ):
            opt.zero_grad(set_to_none=True)
            with self.autocast():
                loss, phase_logs = phase()
            loss.backward()
            self._update(opt)
            logs.update(phase_logs)
        if batch.masks is not None:
            self.opt_s.zero_grad(set_to_none=True)
            loss, seg_logs = segmenter_phase(self.model, batch)
            loss.backward()
            self._update(self.opt_s)
            logs.update(seg_logs)
        self.step_count += 1
        return logs

    def _update(self, opt: torch.optim.Optimizer) -> None:
        if self.sync_gradients is not None:
            self.sync_gradients(opt)
        opt.step()

    def state(self) -> dict:
        return {
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "opt_s": self.opt_s.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def save(self, directory: Path, data: BatchSource | None = None) -> None:
        state = self.state()
        if data is not None and data.generator is not None:
            state["data_rng"] = data.generator.get_state()
        save_checkpoint(directory, self.model, self.config, self.features.describe(), self.step_count, state)

    def restore(self, directory: Path, data: BatchSource | None = None) -> None:
        """Continue exactly where a saved run stopped: weights, optimizers, step and RNG streams."""
        model, meta = load_checkpoint(directory, self.device)
        if meta["features"] != self.features.describe():
            raise ValueError(
                f"{directory}: trained with features {meta['features']}, now {self.features.describe()}"
            )
        self.model.load_state_dict(model.state_dict())
        state = load_train_state(directory)
        if state is None:
            raise ValueError(f"{directory}: checkpoint has no training state to resume from")
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.opt_s.load_state_dict(state["opt_s"])
        torch.set_rng_state(state["torch_rng"])
        if data is not None and data.generator is not None and "data_rng" in state:
            data.generator.set_state(state["data_rng"])
        self.step_count = meta["step"]


def training_data(config: PStyleConfig, data_dir: Path) -> TrainingData:
    """The data a config trains on: the folder's scenes and users, plus the shipped real images."""
    t = config.train
    photos, styles = None, None
    if t.real_images:
        from pstyle.data.photos import PHOTOS, load_training_images

        images = load_training_images(include_styles=True)
        photos = [image for name, image in images.items() if name in PHOTOS]
        styles = list(images.values())
    return TrainingData(data_dir, t.image_size, t.seed, photos, styles, t.photo_fraction)


def train_base(
    config: PStyleConfig, data_dir: Path, out_dir: Path, device: str = "cpu", progress: bool = True
) -> Path:
    """Train (or resume) a base model in `out_dir`; returns the checkpoint directory."""
    out_dir = Path(out_dir)
    t = config.train
    trainer = BaseTrainer(config, device)
    data = training_data(config, data_dir)
    if (out_dir / "meta.json").is_file():
        if PStyleConfig.from_dict(read_meta(out_dir)["config"]).model != config.model:
            raise ValueError(
                f"{out_dir} holds a model of another architecture; use another --out to start afresh"
            )
        trainer.restore(out_dir, data)
    # Grid samples come from their own seeded stream: same rows in every grid, resumed runs included.
    fixed = data.sample(
        min(8, t.batch_size), t.style_images, trainer.device, torch.Generator().manual_seed(t.seed)
    )
    bar = tqdm(total=t.steps, initial=trainer.step_count, desc="train-base", disable=not progress)
    while trainer.step_count < t.steps:
        logs = trainer.step(data.sample(t.batch_size, t.style_images, trainer.device))
        bar.update(1)
        if trainer.step_count % t.log_every == 0:
            bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()})
        if trainer.step_count % t.sample_every == 0 or trainer.step_count == t.steps:
            write_sample_grid(trainer.model, fixed, out_dir / "samples" / f"step{trainer.step_count:06d}.png")
        if trainer.step_count % t.checkpoint_every == 0 or trainer.step_count == t.steps:
            trainer.save(out_dir, data)
    bar.close()
    return out_dir


@torch.no_grad()
def write_sample_grid(model: StyleModel, batch: Batch, path: Path) -> None:
    """Columns: content | first style image | output, one row per sample."""
    codes = model.encoder(batch.styles)
    out = model.generator(batch.content, codes, model.generator.make_noise(batch.content, seed=0))
    rows = torch.stack([batch.content, batch.styles[:, 0], out.clamp(0, 1)], dim=1).flatten(0, 1)
    save_image(rows.float().cpu(), path, nrow=3)

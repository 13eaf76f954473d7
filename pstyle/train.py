"""Base-model training on one process (CPU or CUDA): resumable, with progress and sample grids.

Ray Train runs the same `BaseTrainer.step` inside its workers; this module knows nothing of Ray.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pstyle.checkpoint import load_checkpoint, load_train_state, read_meta, save_checkpoint
from pstyle.config import PStyleConfig
from pstyle.data.folders import ContentFolder, StyleUsers
from pstyle.images import save_image
from pstyle.model import StyleModel
from pstyle.models.features import FeatureExtractor
from pstyle.objective import Batch, discriminator_phase, generator_phase, segmenter_phase

HOLDOUT_PER_USER = 2  # style images per user kept out of training, for honest evaluation


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TrainingData:
    """Pairs random content images with random users' style sets, from a `pstyle data synth` folder.

    Only each user's training split is used; the held-out images stay unseen for evaluation.
    Everything is held in memory as tensors: the datasets this trains on are small.
    """

    def __init__(self, root: Path, image_size: int, seed: int = 0) -> None:
        root = Path(root)
        content_dir = root / "content"
        has_masks = (content_dir / "masks").is_dir()
        content = ContentFolder(content_dir, image_size, with_masks=has_masks)
        items = [content[i] for i in range(len(content))]
        self.content = torch.stack([item["image"] for item in items])
        self.masks = torch.stack([item["mask"] for item in items]) if has_masks else None
        users = StyleUsers(root / "styles", image_size)
        self.user_ids = users.user_ids
        self.style_sets = [users.split(uid, holdout=HOLDOUT_PER_USER, seed=seed)[0] for uid in self.user_ids]
        self.generator = torch.Generator().manual_seed(seed)

    def sample(
        self, batch_size: int, set_size: int, device: torch.device, generator: torch.Generator | None = None
    ) -> Batch:
        g = generator or self.generator
        idx = torch.randint(len(self.content), (batch_size,), generator=g)
        users = torch.randint(len(self.style_sets), (batch_size,), generator=g)
        styles, real = [], []
        for u in users.tolist():
            images = self.style_sets[u]
            pick = torch.randint(len(images), (set_size + 1,), generator=g)  # with replacement: K may exceed
            styles.append(images[pick[:set_size]])
            real.append(images[pick[set_size]])
        masks = self.masks[idx].to(device) if self.masks is not None else None
        return Batch(
            self.content[idx].to(device), torch.stack(styles).to(device), torch.stack(real).to(device), masks
        )


class BaseTrainer:
    """Owns the model, its optimizers and the loop; `step()` is one G, D (and segmenter) update."""

    def __init__(self, config: PStyleConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        seed_everything(config.train.seed)
        self.model = StyleModel(config.model).to(self.device)
        self.features = FeatureExtractor(config.features).to(self.device)
        t = config.train
        betas = (t.beta1, t.beta2)
        g_params = [*self.model.generator.parameters(), *self.model.encoder.parameters()]
        # Lazy R1 (StyleGAN2-ADA): D's lr and betas shrink by k/(k+1) to keep the same effective step.
        ratio = config.loss.r1_every / (config.loss.r1_every + 1)
        self.opt_g = torch.optim.Adam(g_params, lr=t.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(
            self.model.discriminator.parameters(), lr=t.lr_d * ratio, betas=(t.beta1**ratio, t.beta2**ratio)
        )
        self.opt_s = torch.optim.Adam(self.model.segmenter.parameters(), lr=1e-3)
        self.step_count = 0
        # Data-parallel training (pstyle.train_ray) averages gradients across workers here, between
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

    def save(self, directory: Path, data: TrainingData | None = None) -> None:
        state = self.state()
        if data is not None:
            state["data_rng"] = data.generator.get_state()
        save_checkpoint(directory, self.model, self.config, self.features.describe(), self.step_count, state)

    def restore(self, directory: Path, data: TrainingData | None = None) -> None:
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
        if data is not None and "data_rng" in state:
            data.generator.set_state(state["data_rng"])
        self.step_count = meta["step"]


def train_base(
    config: PStyleConfig, data_dir: Path, out_dir: Path, device: str = "cpu", progress: bool = True
) -> Path:
    """Train (or resume) a base model in `out_dir`; returns the checkpoint directory."""
    out_dir = Path(out_dir)
    t = config.train
    trainer = BaseTrainer(config, device)
    data = TrainingData(data_dir, t.image_size, seed=t.seed)
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

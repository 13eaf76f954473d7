"""Per-user fine-tuning: one low-rank adapter (plus a learned style code) over the frozen base.

The personalization loss for one user:
  style + content + adversarial  the base objective's terms (weights from the base checkpoint),
                                 with the user's training style images as the only style target;
                                 the discriminator is the base's, frozen (FreezeD, Mo et al. 2020:
                                 a few images are too few to fine-tune D without it memorising them);
  feedback                       outputs the user rated: high ratings join the style targets,
                                 low ratings must end up farther away than the user's own style;
  regularisation                 L2 on the adapter weights and a pull toward the base output, so a
                                 handful of images cannot drag the generator anywhere it likes;
  early stopping                 on the user's held-out style images (SWD), keeping the best state.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from pstyle import losses
from pstyle.adapters import (
    AdapterConfig,
    adapter_parameters,
    adapter_state_dict,
    inject_adapter,
    load_adapter_state,
    save_adapter,
    set_active_adapter,
    style_code,
)
from pstyle.checkpoint import fingerprint, load_checkpoint
from pstyle.config import LossConfig, PStyleConfig, from_dict
from pstyle.images import load_image
from pstyle.metrics import ssim, swd
from pstyle.model import StyleModel
from pstyle.models.features import FeatureExtractor, gram

THUMBS = {"up": 5, "down": 1}


@dataclass
class PersonalizeConfig:
    """How one user's adapter is trained; the shared loss weights come from the base checkpoint."""

    steps: int = 100
    lr: float = 5e-3  # JoJoGAN fine-tunes at 2e-3; zero-initialised low-rank updates take a larger step
    batch_size: int = 8
    holdout: int = 2  # style images kept out of training for early stopping and before/after metrics
    eval_every: int = 20
    patience: int = 3  # evaluations without improvement before stopping
    sliced_wasserstein: float = 100.0  # distribution-level texture term on top of the base's Gram term
    feedback: float = 1.0  # weight of the rating-driven terms
    feedback_margin: float = 0.1  # disliked outputs must be this much (relatively) farther than the style
    l2: float = 1e-3  # on adapter weights (not the style code)
    base_consistency: float = 0.1  # MSE to the base model's output for the same code and noise
    seed: int = 0
    adapter: AdapterConfig = field(default_factory=AdapterConfig)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if k != "adapter"}
        return {**data, "adapter": self.adapter.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PersonalizeConfig:
        return from_dict(cls, data)


@dataclass
class Feedback:
    """Images the user rated, as tensors, with weights in [-1, 1] ((rating - 3) / 2)."""

    images: Tensor  # (N, 3, S, S)
    weights: Tensor  # (N,)

    @classmethod
    def load(cls, path: Path, size: int) -> Feedback:
        """A JSON list (or JSONL) of {"image": path relative to the file, "rating": 1-5 | "up" | "down"}."""
        path = Path(path)
        text = path.read_text()
        try:
            rows = (
                json.loads(text)
                if text.lstrip().startswith("[")
                else [json.loads(x) for x in text.splitlines() if x]
            )
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path.name}: not JSON or JSONL: {exc}") from None
        images, weights = [], []
        for i, row in enumerate(rows):
            rating = THUMBS.get(row.get("rating"), row.get("rating")) if isinstance(row, dict) else None
            if not isinstance(rating, int | float) or not 1 <= rating <= 5 or "image" not in row:
                raise ValueError(f"{path.name}: entry {i} needs an image and a rating 1-5, 'up' or 'down'")
            images.append(load_image(path.parent / row["image"], size))
            weights.append((rating - 3) / 2)
        if not images:
            raise ValueError(f"{path.name}: no feedback entries")
        return cls(torch.stack(images), torch.tensor(weights, dtype=torch.float32))


def feedback_loss(
    out_grams: list[Tensor],
    target_grams: list[Tensor],
    feedback: Feedback,
    feats: list[Tensor],
    margin: float,
) -> Tensor:
    """Liked outputs pull (weighted Gram distance); disliked ones push: the output must be closer to
    the user's style than to each disliked image by a relative margin (a triplet hinge)."""
    total = out_grams[0].new_zeros(())
    for g_out, g_style, f_fb in zip(out_grams, target_grams, feats, strict=True):
        g_fb = gram(f_fb)  # (N, C, C)
        d_fb = (g_out[:, None] - g_fb[None]).square().mean(dim=(2, 3))  # (B, N)
        d_style = (g_out - g_style).square().mean(dim=(1, 2))[:, None]  # (B, 1)
        w = feedback.weights.to(d_fb)
        pull = (d_fb * w.clamp(min=0)).mean()
        push = (F.relu((1 + margin) * d_style - d_fb) * (-w).clamp(min=0)).mean()
        total = total + pull + push
    return total / len(out_grams)


class Personalizer:
    """Fine-tunes adapter `user_id` on a copy of the base generator; the base model is untouched."""

    def __init__(
        self, base: StyleModel, base_config: PStyleConfig, cfg: PersonalizeConfig, user_id: str
    ) -> None:
        self.base, self.cfg, self.user_id = base.eval().requires_grad_(False), cfg, user_id
        self.loss_weights: LossConfig = base_config.loss
        self.features = FeatureExtractor(base_config.features).to(next(base.parameters()).device)
        self.generator = copy.deepcopy(base.generator)  # adapters are injected here, never into `base`

    @torch.no_grad()
    def score(self, content: Tensor, held_out: Tensor, code: Tensor, adapter: bool) -> dict[str, float]:
        """SWD to the held-out style images and content SSIM, with a fixed noise seed."""
        self.generator.eval()  # adapter dropout off; the base path has no train-time behaviour
        set_active_adapter(self.generator, self.user_id if adapter else None)
        noise = self.generator.make_noise(content, seed=self.cfg.seed)
        out = self.generator(content, code.expand(len(content), -1), noise).clamp(0, 1)
        return {
            "swd": swd(out, held_out, seed=self.cfg.seed)["mean"],
            "ssim": ssim(out, content).mean().item(),
        }

    def fit(
        self, content: Tensor, styles: Tensor, feedback: Feedback | None = None, progress: bool = True
    ) -> dict[str, Any]:
        """Train on `styles` (K, 3, S, S) minus a held-out split; returns before/after metrics."""
        cfg, w = self.cfg, self.loss_weights
        gen = torch.Generator().manual_seed(cfg.seed)
        order = torch.randperm(len(styles), generator=gen)
        if len(styles) <= cfg.holdout:
            raise ValueError(f"user {self.user_id}: needs more than {cfg.holdout} valid style images")
        held, train = styles[order[: cfg.holdout]], styles[order[cfg.holdout :]]
        with torch.no_grad():
            base_code = self.base.encoder(train)[0]
            style_feats = self.features(train)
            style_grams = [gram(f).mean(dim=0, keepdim=True) for f in style_feats]
            fb_feats = self.features(feedback.images.to(train)) if feedback is not None else None
        inject_adapter(self.generator, self.user_id, cfg.adapter, style_code=base_code)
        code = style_code(self.generator, self.user_id)
        params = adapter_parameters(self.generator, self.user_id)
        weights = [p for p in params if p is not code]
        opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.0, 0.99))
        # Early stopping selects on one content batch; before/after are reported on another, so the
        # reported gain is not the selection's own optimism.
        select, report = content[: cfg.batch_size], content[cfg.batch_size : 2 * cfg.batch_size]
        if len(report) == 0:
            raise ValueError(f"need at least {cfg.batch_size + 1} content images, got {len(content)}")
        before = self.score(report, held, base_code, adapter=False)
        best = {"step": 0, "swd": self.score(select, held, code.detach(), adapter=True)["swd"]}
        best_state, stale = _clone(adapter_state_dict(self.generator, self.user_id)), 0
        bar = tqdm(range(1, cfg.steps + 1), desc=f"personalize {self.user_id}", disable=not progress)
        for step in bar:
            idx = torch.randint(len(content), (cfg.batch_size,), generator=gen)
            batch = content[idx]
            noise = self.generator.make_noise(batch)
            codes = code.expand(len(batch), -1)
            with torch.no_grad():
                set_active_adapter(self.generator, None)
                base_out = self.generator(batch, codes.detach(), noise)
                content_feats = self.features(batch)
            set_active_adapter(self.generator, self.user_id)
            self.generator.train()  # adapter dropout on, if configured
            out = self.generator(batch, codes, noise)
            feats = self.features(out)
            terms = {
                "style": w.style
                * losses.style_loss(feats, [g.expand(len(batch), -1, -1) for g in style_grams]),
                "sliced_wasserstein": cfg.sliced_wasserstein
                * losses.sliced_wasserstein_loss(feats, style_feats),
                "content": w.content * losses.content_loss(feats, content_feats),
                "adversarial": w.adversarial * losses.g_hinge_loss(self.base.discriminator(out, codes)),
                "base_consistency": cfg.base_consistency * F.mse_loss(out, base_out),
                "l2": cfg.l2 * sum(p.square().sum() for p in weights),
            }
            if feedback is not None:
                grams = [gram(f) for f in feats]
                terms["feedback"] = cfg.feedback * feedback_loss(
                    grams, style_grams, feedback, fb_feats, cfg.feedback_margin
                )
            loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % cfg.eval_every == 0 or step == cfg.steps:
                current = self.score(select, held, code.detach(), adapter=True)["swd"]
                bar.set_postfix(swd=f"{current:.1f}", best=f"{best['swd']:.1f}")
                if current < best["swd"]:
                    best, stale = {"step": step, "swd": current}, 0
                    best_state = _clone(adapter_state_dict(self.generator, self.user_id))
                else:
                    stale += 1
                    if stale >= cfg.patience:
                        break
        load_adapter_state(self.generator, self.user_id, best_state)
        after = self.score(report, held, code.detach(), adapter=True)
        return {"before": before, "after": after, "best_step": best["step"], "steps_run": step}

    def save(self, out_dir: Path, metrics: dict[str, Any], version: str = "local") -> dict[str, Any]:
        meta = {
            "user_id": self.user_id,
            "version": version,
            "base_fingerprint": fingerprint(self.base),
            "training": self.cfg.to_dict(),
            "metrics": metrics,
        }
        return save_adapter(out_dir, self.generator, self.user_id, meta)


def personalize_user(
    base_dir: Path,
    user_id: str,
    styles: Tensor,
    content: Tensor,
    out_dir: Path,
    cfg: PersonalizeConfig | None = None,
    feedback: Feedback | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Load the base, fine-tune one user's adapter, save it; returns the adapter metadata."""
    base, meta = load_checkpoint(base_dir)
    personalizer = Personalizer(
        base, PStyleConfig.from_dict(meta["config"]), cfg or PersonalizeConfig(), user_id
    )
    metrics = personalizer.fit(content, styles, feedback, progress)
    return personalizer.save(out_dir, metrics)


def _clone(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in state.items()}

"""Per-user fine-tuning: one low-rank adapter (plus a learned style code) over the frozen base.

The personalization loss for one user:
  patch SWD                      sliced Wasserstein distance between Laplacian-pyramid 7x7 patches of
                                 the outputs and of the user's training style images: the statistic
                                 the held-out metric (`metrics.swd`) measures, made differentiable.
                                 Without it the feature-space terms below kept falling while held-out
                                 SWD rose for 3 users in 4 (docs/benchmarks.md, "Personalization");
  style + content + structure    the base objective's terms (weights from the base checkpoint),
  + adversarial                  with the user's training style images as the only style target;
                                 the discriminator is the base's, frozen (FreezeD, Mo et al. 2020:
                                 a few images are too few to fine-tune D without it memorising them);
  sliced_wasserstein             the same distribution match in the loss network's feature space;
  feedback                       outputs the user rated: high ratings join the style targets,
                                 low ratings must end up farther away than the user's own style;
  regularisation                 L2 on the adapter weights and a pull toward the base output, so a
                                 handful of images cannot drag the generator anywhere it likes;
  SSIM budget                    each output may lose `ssim_budget` of content SSIM against the base's
                                 zero-shot output for free, and pays `ssim_penalty` per unit beyond:
                                 the texture terms above otherwise buy style with the photo's
                                 structure (docs/benchmarks.md, "Personalization with real-image
                                 style sets"), and a personalized photo must still show the photo;
  early stopping                 on the user's held-out style images (feature-statistics style
                                 distance), keeping the best state among those whose content SSIM
                                 on the selection batch is within `ssim_budget` of the zero-shot
                                 output's: the budget is a per-image hinge on training batches, so
                                 a state can still overspend on other photos.

Several users can train together (`GroupPersonalizer`): one optimizer step advances every user of
the group, with their samples in one batch, each through its own adapter.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from pstyle.adapters import (
    adapter_parameters,
    adapter_state_dict,
    inject_adapter,
    load_adapter_state,
    lora_layers,
    save_adapter,
    set_active_adapter,
    style_code,
)
from pstyle.adapters.lora import PerSample
from pstyle.config import LossConfig, PersonalizeConfig, PStyleConfig
from pstyle.data.splits import holdout_split, user_generator
from pstyle.images import load_image
from pstyle.models.features import FeatureExtractor
from pstyle.models.style_model import StyleModel
from pstyle.quality.metrics import laplacian_pyramid, ssim, style_distance, swd
from pstyle.quality.swd import random_directions, random_patches, sliced_distance
from pstyle.ratings import parse_rating, rating_weight
from pstyle.training import losses
from pstyle.training.checkpoint import fingerprint, load_checkpoint

ForwardMode = Literal["mixed", "grouped"]
SWD_MIN_RES = 16  # coarsest pyramid level, as `metrics.swd`
SELECT_ON = "style"  # early stopping keeps the affordable state with the lowest held-out style distance


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
            rating = parse_rating(row.get("rating")) if isinstance(row, dict) else None
            if rating is None or "image" not in row:
                raise ValueError(f"{path.name}: entry {i} needs an image and a rating 1-5, 'up' or 'down'")
            images.append(load_image(path.parent / row["image"], size))
            weights.append(rating_weight(rating))
        if not images:
            raise ValueError(f"{path.name}: no feedback entries")
        return cls(torch.stack(images), torch.tensor(weights, dtype=torch.float32))


def style_descriptors(feats: list[Tensor]) -> list[Tensor]:
    """Per tap, each image's channel mean and std side by side: (B, 2C), what the style loss compares."""
    return [torch.cat(losses.feature_stats(f), dim=1) for f in feats]


def feedback_loss(
    out_desc: list[Tensor],
    style_desc: list[Tensor],
    feedback: Feedback,
    feedback_desc: list[Tensor],
    margin: float,
) -> Tensor:
    """Liked outputs pull (weighted feature-statistics distance); disliked ones push: the output must be
    closer to the user's style than to each disliked image by a relative margin (a triplet hinge).

    out_desc[i] (B, 2C), style_desc[i] (1, 2C), feedback_desc[i] (N, 2C): `style_descriptors` per tap.
    """
    total = out_desc[0].new_zeros(())
    for d_out, d_style_target, d_fb_images in zip(out_desc, style_desc, feedback_desc, strict=True):
        d_fb = (d_out[:, None] - d_fb_images[None]).square().mean(dim=2)  # (B, N)
        d_style = (d_out - d_style_target).square().mean(dim=1, keepdim=True)  # (B, 1)
        w = feedback.weights.to(d_fb)
        pull = (d_fb * w.clamp(min=0)).mean()
        push = (F.relu((1 + margin) * d_style - d_fb) * (-w).clamp(min=0)).mean()
        total = total + pull + push
    return total / len(out_desc)


def patch_swd_loss(out: Tensor, target_pyramid: list[Tensor], patches_per_image: int = 128,
                   n_directions: int = 64, rng: torch.Generator | None = None) -> Tensor:  # fmt: skip
    """Differentiable `metrics.swd`: sliced Wasserstein-1 between random 7x7x3 Laplacian-pyramid
    patches of `out` (B, 3, S, S) and of a target set (its pyramid, precomputed), averaged over levels.

    As in the metric, each patch set is normalised per colour channel by its own statistics, so the
    term matches the shape of local texture distributions at every scale, not just mean colours.
    Patch positions and directions are fresh each call (from `rng`, else the device RNG): an unbiased
    stochastic estimate.
    """
    levels = laplacian_pyramid(out, SWD_MIN_RES)
    total = out.new_zeros(())
    for lo, lt in zip(levels, target_pyramid, strict=True):
        n = len(lo) * patches_per_image
        da, db = random_patches(lo, n, rng, eps=1e-6), random_patches(lt, n, rng, eps=1e-6)
        total = total + sliced_distance(da, db, random_directions(da.shape[1], n_directions, da, rng))
    return total / len(levels)


@dataclass
class _Targets:
    """One user's fixed loss targets, computed once from their training style images."""

    feats: list[Tensor]  # feature maps of the training images, shallow to deep
    stats: list[tuple[Tensor, Tensor]]  # their pooled channel mean and std per level, (1, C) each
    pyramid: list[Tensor]  # Laplacian pyramid of the training images (patch SWD)
    feedback: Feedback | None
    feedback_desc: list[Tensor] | None  # `style_descriptors` of the rated images


@contextmanager
def _routed(generator: torch.nn.Module, routes: dict[str, PerSample]) -> Iterator[None]:
    """Per-sample adapter routes on the generator's LoRA layers for one forward, cleared afterwards."""
    layers = lora_layers(generator)
    for name, route in routes.items():
        layers[name].route = route
    try:
        yield
    finally:
        for name in routes:
            layers[name].route = None


def selection_and_report(content: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """The content batch early stopping selects on, and the one before/after are reported on."""
    return content[:batch_size], content[batch_size : 2 * batch_size]


def _lr_factor(schedule: str, steps: int, step: int) -> float:
    """Learning-rate multiplier after `step` optimizer steps: cosine decay to 0 at `steps`, or 1."""
    return 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)) if schedule == "cosine" else 1.0


class GroupPersonalizer:
    """Fine-tunes one adapter per user for a group of users on one copy of the base generator.

    Each user has their own adapter, style code, held-out split, loss targets and early stopping;
    only the forward passes are shared. `forward` says how a batch holding several users' samples
    runs the generator:
      "mixed"    one pass, each sample through its own user's adapter: the AdapterBank's per-sample
                 route (`PerSample`), built from the live adapter parameters so gradients flow;
      "grouped"  one pass per user, with that user's adapter active, concatenated.
    Everything around the generator (the base pass, features, discriminator) runs once on the whole
    batch either way. A group of one always uses the plain single-adapter path. The base model is
    untouched: adapters are injected into a deep copy of its generator.

    Every random draw for a user (adapter init, content picks, noise, loss projections) comes from
    that user's own generator (`user_generator`), so a user's adapter does not depend on the group
    they train in or on what the process drew before.
    """

    def __init__(
        self,
        base: StyleModel,
        base_config: PStyleConfig,
        cfg: PersonalizeConfig,
        user_ids: list[str],
        forward: ForwardMode = "mixed",
    ) -> None:
        if not user_ids or len(set(user_ids)) != len(user_ids):
            raise ValueError(f"need distinct user ids, got {user_ids}")
        if forward not in ("mixed", "grouped"):
            raise ValueError(f"forward must be 'mixed' or 'grouped', got {forward!r}")
        if forward == "mixed" and len(user_ids) > 1 and cfg.adapter.dropout > 0:
            raise ValueError("the mixed forward does not apply adapter dropout: use forward='grouped'")
        self.base = base.eval().requires_grad_(False)
        self.cfg, self.user_ids, self.forward = cfg, list(user_ids), forward
        self.loss_weights: LossConfig = base_config.loss
        self.features = FeatureExtractor(base_config.features).to(next(base.parameters()).device)
        self.generator = copy.deepcopy(base.generator)  # adapters are injected here, never into `base`
        self.base_fingerprint = fingerprint(base)

    # --- forward passes ----------------------------------------------------------------------------
    def _render(self, content: Tensor, codes: Tensor, noise: Tensor, users: list[str] | None) -> Tensor:
        """The generator on a batch of len(users) equal slices, slice i through users[i]'s adapter
        (users None: the base generator alone)."""
        gen = self.generator
        if users is None or len(users) == 1:
            set_active_adapter(gen, None if users is None else users[0])
            return gen(content, codes, noise)
        n = len(content) // len(users)
        if self.forward == "grouped":
            outs = []
            for i, user in enumerate(users):
                set_active_adapter(gen, user)
                part = slice(i * n, (i + 1) * n)
                outs.append(gen(content[part], codes[part], noise[part]))
            return torch.cat(outs)
        set_active_adapter(gen, None)
        sample_user = torch.arange(len(users), device=content.device).repeat_interleave(n)
        routes = {}
        for name, layer in lora_layers(gen).items():
            down = torch.stack([layer.lora_down[u].weight for u in users])  # (K, r, in[, k, k])
            up = torch.stack([layer.lora_up[u].weight.flatten(1) * layer.scaling[u] for u in users])
            routes[name] = PerSample(down[sample_user], up[sample_user])  # (B, r, in[, k, k]), (B, out, r)
        with _routed(gen, routes):
            return gen(content, codes, noise)

    @torch.no_grad()
    def score(self, content: Tensor, users: list[str], adapter: bool) -> dict[str, dict[str, float]]:
        """Per user: feature-statistics style distance and SWD to their held-out style images and content
        SSIM, averaged over `eval_seeds` fixed noise/patch seeds; with the adapters (and learned codes)
        or the base (encoder codes)."""
        self.generator.eval()  # adapter dropout off; the base path has no train-time behaviour
        k, n = len(users), len(content)
        codes = torch.cat(
            [(self.codes[u].detach() if adapter else self.base_codes[u]).expand(n, -1) for u in users]
        )
        scores = {u: {"style": 0.0, "swd": 0.0, "ssim": 0.0} for u in users}
        for s in range(self.cfg.eval_seeds):
            noise = self.generator.make_noise(content, seed=self.cfg.seed + s).repeat(k, 1, 1, 1)
            out = self._render(content.repeat(k, 1, 1, 1), codes, noise, users if adapter else None)
            for i, u in enumerate(users):
                part = out[i * n : (i + 1) * n].clamp(0, 1)
                scores[u]["style"] += style_distance(part, self.held[u]).mean().item() / self.cfg.eval_seeds
                scores[u]["swd"] += (
                    swd(part, self.held[u], seed=self.cfg.seed + s)["mean"] / self.cfg.eval_seeds
                )
                scores[u]["ssim"] += ssim(part, content).mean().item() / self.cfg.eval_seeds
        return scores

    @torch.no_grad()
    def stylize(self, content: Tensor, user: str, adapter: bool, seed: int = 0) -> Tensor:
        """`content` in `user`'s style, through their adapter and learned code or the base's
        zero-shot code: what the before/after scores look at."""
        self.generator.eval()
        code = (self.codes[user].detach() if adapter else self.base_codes[user]).expand(len(content), -1)
        noise = self.generator.make_noise(content, seed=seed)
        return self._render(content, code, noise, [user] if adapter else None)

    @torch.no_grad()
    def _zero_shot_ssim(self, content: Tensor, users: list[str]) -> dict[str, Tensor]:
        """Per user, each content image's SSIM under the base's zero-shot code: the reference the
        SSIM budget is spent against (fixed, so the budget does not drift with the learned code)."""
        return {u: ssim(self.stylize(content, u, adapter=False, seed=self.cfg.seed), content) for u in users}

    # --- training ----------------------------------------------------------------------------------
    def _prepare(self, styles: dict[str, Tensor], feedback: dict[str, Feedback | None] | None) -> None:
        """Per user: held-out/train split, loss targets, random generator, and an adapter starting at
        the encoder's code."""
        cfg = self.cfg
        self.train, self.held, self.targets = {}, {}, {}
        self.base_codes, self.codes, self.weights = {}, {}, {}
        self.rngs = {user: user_generator(user, cfg.seed, stream="personalize") for user in self.user_ids}
        for user in self.user_ids:
            images = styles[user]
            if len(images) <= cfg.holdout:
                raise ValueError(
                    f"user {user}: needs more than {cfg.holdout} valid style images, has {len(images)}"
                )
            train, self.held[user] = holdout_split(images, user, cfg.holdout, cfg.seed)
            self.train[user] = train
            fb = (feedback or {}).get(user)
            with torch.no_grad():
                self.base_codes[user] = self.base.encoder(train)[0]
                feats = self.features(train)
                self.targets[user] = _Targets(
                    feats=feats,
                    stats=losses.style_set_stats(feats, len(train)),
                    pyramid=laplacian_pyramid(train, SWD_MIN_RES),
                    feedback=fb,
                    feedback_desc=style_descriptors(self.features(fb.images.to(train))) if fb else None,
                )
            inject_adapter(
                self.generator, user, cfg.adapter, style_code=self.base_codes[user], rng=self.rngs[user]
            )
            self.codes[user] = style_code(self.generator, user)
            self.weights[user] = [
                p for p in adapter_parameters(self.generator, user) if p is not self.codes[user]
            ]

    def _losses(
        self, out: Tensor, batch: Tensor, codes: Tensor, base_out: Tensor, content_feats: list[Tensor],
        base_ssim: Tensor, users: list[str],
    ) -> dict[str, Tensor]:  # fmt: skip
        """The loss terms, each the sum over users of that user's batch-mean term (so a user's gradient
        does not depend on how many others share the batch). base_ssim (B,): each content image's SSIM
        under the base's zero-shot code (`_zero_shot_ssim`)."""
        cfg, w, k = self.cfg, self.loss_weights, len(users)
        n = len(batch) // k
        feats = self.features(out)
        ssim_overspend = F.relu(base_ssim - cfg.ssim_budget - ssim(out, batch))
        terms = {
            "content": k * w.content * losses.content_loss(feats, content_feats),
            "structure": k * w.structure * losses.structure_loss(feats, content_feats),
            "adversarial": k * w.adversarial * losses.g_hinge_loss(self.base.discriminator(out, codes)),
            "base_consistency": k * cfg.base_consistency * F.mse_loss(out, base_out),
            "ssim_budget": k * cfg.ssim_penalty * ssim_overspend.mean(),
            "l2": cfg.l2 * sum(p.square().sum() for u in users for p in self.weights[u]),
        }
        per_user = {"style": [], "sliced_wasserstein": [], "patch_swd": [], "feedback": []}
        for i, user in enumerate(users):
            part, t = slice(i * n, (i + 1) * n), self.targets[user]
            f_user = [f[part] for f in feats]
            per_user["style"].append(
                w.style
                * losses.style_loss(f_user, [(m.expand(n, -1), sd.expand(n, -1)) for m, sd in t.stats])
            )
            rng = self.rngs[user]
            per_user["sliced_wasserstein"].append(
                cfg.sliced_wasserstein * losses.sliced_wasserstein_loss(f_user, t.feats, rng=rng)
            )
            if cfg.patch_swd:
                per_user["patch_swd"].append(cfg.patch_swd * patch_swd_loss(out[part], t.pyramid, rng=rng))
            if t.feedback is not None:
                target = [torch.cat(pair, dim=1) for pair in t.stats]
                per_user["feedback"].append(
                    cfg.feedback
                    * feedback_loss(
                        style_descriptors(f_user), target, t.feedback, t.feedback_desc, cfg.feedback_margin
                    )
                )
        terms.update({name: sum(values) for name, values in per_user.items() if values})
        return terms

    def fit_users(
        self,
        content: Tensor,
        styles: dict[str, Tensor],
        feedback: dict[str, Feedback | None] | None = None,
        progress: bool = True,
        on_eval: Callable[[int, int], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Train every user's adapter on their `styles` (K, 3, S, S) minus a held-out split.

        `on_eval(step, steps)` runs after every held-out evaluation: a job's progress for its owner.

        Returns per user {before, after (held-out SWD/SSIM on the report batch), best_step, steps_run}.
        Early stopping selects on one content batch; before/after are reported on another, so the
        reported gain is not the selection's own optimism.
        """
        cfg = self.cfg
        select, report = selection_and_report(content, cfg.batch_size)
        if len(report) == 0:
            raise ValueError(f"need at least {cfg.batch_size + 1} content images, got {len(content)}")
        self._prepare(styles, feedback)
        users = list(self.user_ids)
        zero_shot_ssim = self._zero_shot_ssim(content, users)
        opt = torch.optim.Adam(
            [
                {"params": [p for u in users for p in self.weights[u]], "lr": cfg.lr},
                {"params": [self.codes[u] for u in users], "lr": cfg.code_lr},
            ],
            betas=(0.0, 0.99),
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, partial(_lr_factor, cfg.schedule, cfg.steps))
        before = self.score(report, users, adapter=False)
        initial = self.score(select, users, adapter=True)  # == the base: zero deltas, encoder codes
        best = {u: {"step": 0, SELECT_ON: initial[u][SELECT_ON]} for u in users}
        best_state = {u: _clone(adapter_state_dict(self.generator, u)) for u in users}
        stale, steps_run, active = dict.fromkeys(users, 0), dict.fromkeys(users, 0), list(users)
        label = users[0] if len(users) == 1 else f"{len(users)} users"
        bar = tqdm(range(1, cfg.steps + 1), desc=f"personalize {label}", disable=not progress)
        for step in bar:
            picks, noises = [], []
            for u in active:
                picks.append(torch.randint(len(content), (cfg.batch_size,), generator=self.rngs[u]))
                noises.append(self.generator.make_noise(content[picks[-1]], rng=self.rngs[u]))
            batch, noise = content[torch.cat(picks)], torch.cat(noises)
            base_ssim = torch.cat([zero_shot_ssim[u][i] for u, i in zip(active, picks, strict=True)])
            codes = torch.cat([self.codes[u].expand(cfg.batch_size, -1) for u in active])
            with torch.no_grad():
                base_out = self._render(batch, codes.detach(), noise, None)
                content_feats = self.features(batch)
            self.generator.train()  # adapter dropout on, if configured
            out = self._render(batch, codes, noise, active)
            loss = sum(self._losses(out, batch, codes, base_out, content_feats, base_ssim, active).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            for u in active:
                steps_run[u] = step
            if step % cfg.eval_every and step != cfg.steps:
                continue
            current = self.score(select, active, adapter=True)
            for u in list(active):
                affordable = initial[u]["ssim"] - current[u]["ssim"] <= cfg.ssim_budget
                if affordable and current[u][SELECT_ON] < best[u][SELECT_ON]:
                    best[u], stale[u] = {"step": step, SELECT_ON: current[u][SELECT_ON]}, 0
                    best_state[u] = _clone(adapter_state_dict(self.generator, u))
                else:
                    stale[u] += 1
                    if stale[u] >= cfg.patience:
                        active.remove(u)
            mean_style = sum(c[SELECT_ON] for c in current.values()) / len(current)
            bar.set_postfix(active=len(active), style=f"{mean_style:.3f}")
            if on_eval is not None:
                on_eval(step, cfg.steps)
            if not active:
                break
        for u in users:
            load_adapter_state(self.generator, u, best_state[u])
        after = self.score(report, users, adapter=True)
        return {
            u: {
                "before": before[u],
                "after": after[u],
                "best_step": best[u]["step"],
                "steps_run": steps_run[u],
            }
            for u in users
        }

    def save_user(
        self, user_id: str, out_dir: Path, metrics: dict[str, Any], version: str = "local"
    ) -> dict[str, Any]:
        meta = {
            "user_id": user_id,
            "version": version,
            "base_fingerprint": self.base_fingerprint,
            "training": self.cfg.to_dict(),
            "metrics": metrics,
        }
        return save_adapter(out_dir, self.generator, user_id, meta)


class Personalizer(GroupPersonalizer):
    """One user's adapter: the group of one (plain single-adapter forward)."""

    def __init__(
        self, base: StyleModel, base_config: PStyleConfig, cfg: PersonalizeConfig, user_id: str
    ) -> None:
        super().__init__(base, base_config, cfg, [user_id])
        self.user_id = user_id

    def fit(
        self, content: Tensor, styles: Tensor, feedback: Feedback | None = None, progress: bool = True
    ) -> dict[str, Any]:
        """Train on `styles` (K, 3, S, S) minus a held-out split; returns before/after metrics."""
        return self.fit_users(content, {self.user_id: styles}, {self.user_id: feedback}, progress)[
            self.user_id
        ]

    def save(self, out_dir: Path, metrics: dict[str, Any], version: str = "local") -> dict[str, Any]:
        return self.save_user(self.user_id, out_dir, metrics, version)


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

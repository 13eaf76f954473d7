"""The base model: the four networks that ship together, and the one call that stylizes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pstyle.config import ModelConfig
from pstyle.models import Discriminator, Generator, Segmenter, StyleEncoder


class StyleModel(nn.Module):
    """Style encoder + generator (what inference needs), discriminator + segmenter (training/regions)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = StyleEncoder()
        self.generator = Generator(cfg)
        self.discriminator = Discriminator(cfg)
        self.segmenter = Segmenter(cfg)

    @torch.no_grad()
    def stylize(
        self,
        content: Tensor,
        styles: Tensor,
        seed: int | None = 0,
        strength: float = 1.0,
        mask: Tensor | None = None,
    ) -> Tensor:
        """content (B,3,H,W) and one style set (K,3,h,w) shared by the batch -> (B,3,H,W).

        seed fixes the noise (same seed, same image); mask (B,1,H,W) limits where style applies.
        """
        code = self.encoder(styles.to(content)).expand(content.shape[0], -1)
        noise = self.generator.make_noise(content, seed)
        return self.generator(content, code, noise, strength=strength, mask=mask).clamp(0, 1)

    @torch.no_grad()
    def subject_mask(self, content: Tensor) -> Tensor:
        """The segmenter's subject mask for region-only stylization (eval mode: BatchNorm frozen)."""
        was_training = self.segmenter.training
        self.segmenter.eval()
        mask = self.segmenter.predict_mask(content)
        self.segmenter.train(was_training)
        return mask

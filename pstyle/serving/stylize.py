"""File-level stylization: load and validate inputs, pick the region, run the model, write the result."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from pstyle.adapters import load_adapter, set_active_adapter, style_code
from pstyle.data.folders import load_style_images
from pstyle.images import load_mask, open_image, resize_shorter_side, save_image, to_tensor
from pstyle.models.generator import DOWNSAMPLING
from pstyle.models.style_model import StyleModel
from pstyle.models.subjects import subject_mask
from pstyle.serving.regions import region_masks
from pstyle.training.bundled import resolve_model_dir
from pstyle.training.checkpoint import fingerprint, load_checkpoint

STYLE_SIDE_MAX = 512  # style images are encoded at the content's shorter side, at most this


def fit_to_stride(image: Tensor) -> Tensor:
    """Crop (at most 15 px in each dimension) so H and W are multiples of the generator's stride."""
    h, w = image.shape[-2:]
    return image[..., : h - h % DOWNSAMPLING, : w - w % DOWNSAMPLING]


def region_mask(
    model: StyleModel, content: Tensor, mask: str | Path | None, segmenter_weights: str | None = None
) -> Tensor | None:
    """`--mask`: None (whole image), "subject" or "background" of the photo, or a mask image's path.

    The subject comes from `pstyle.serving.regions` (the subject head on the pretrained network plus
    the face prior); with `segmenter_weights` it comes from those U-Net weights instead.
    """
    if mask is None:
        return None
    if str(mask) in ("subject", "background"):
        find_subject = subject_mask
        if segmenter_weights:
            model.segmenter.load_weights(segmenter_weights)
            find_subject = model.subject_mask
        return region_masks([str(mask)], content, find_subject=find_subject)
    return region_masks(["mask"], content, [load_mask(Path(mask))])


@torch.no_grad()
def stylize_file(
    content_path: Path,
    model_dir: Path | None,
    style_paths: list[Path],
    output: Path,
    strength: float = 1.0,
    seed: int = 0,
    mask: str | Path | None = None,
    size: int | None = None,
    device: torch.device | str = "cpu",
    segmenter_weights: str | None = None,
    adapter_dir: Path | None = None,
) -> Tensor:
    """Stylize one image file with a base model (None: the bundled one); returns the output (3,H,W).

    `segmenter_weights` (path or s3:// URI, safetensors): subject masks from that U-Net.
    `adapter_dir` renders with a user's adapter (its LoRA weights and learned style code) instead of
    encoding `style_paths`: the offline twin of what the server returns for that user.
    """
    if size is not None and (size < 32 or size % DOWNSAMPLING):
        raise ValueError(f"--size must be a multiple of {DOWNSAMPLING} and at least 32, got {size}")
    model, _ = load_checkpoint(resolve_model_dir(model_dir), device)
    model.eval()
    image = open_image(content_path)
    content = to_tensor(resize_shorter_side(image, size) if size else image)
    if min(content.shape[-2:]) < DOWNSAMPLING * 2:
        raise ValueError(f"{content_path.name}: too small ({content.shape[-1]}x{content.shape[-2]} px)")
    content = fit_to_stride(content).unsqueeze(0).to(device)
    region = region_mask(model, content, mask, segmenter_weights)
    if adapter_dir is not None:
        load_adapter(adapter_dir, model.generator, "user", fingerprint(model))
        set_active_adapter(model.generator, "user")
        code = style_code(model.generator, "user").detach().expand(content.shape[0], -1)
        noise = model.generator.make_noise(content, seed)
        out = model.generator(content, code, noise, strength=strength, mask=region).clamp(0, 1)
    else:
        style_size = min(min(content.shape[-2:]), STYLE_SIDE_MAX)  # texture scale comparable to the content's
        styles = load_style_images(style_paths, style_size).to(device)
        out = model.stylize(content, styles, seed=seed, strength=strength, mask=region)
    save_image(out[0].cpu(), output)
    return out[0]

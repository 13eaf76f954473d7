"""Finding the subject of a photograph, for `--mask subject` and `region=subject`.

`subject_mask`: the subject head (`subject_head.py`, a decoder on the frozen ImageNet network trained
on object cutouts pasted onto backgrounds) gives each pixel a subject probability. Its cutouts hold
few people, so people get their own prior: OpenCV's LBP frontal-face cascade (the XML file that
scikit-image ships next to its sample data; a detector, not one of its images) finds faces, and each
face proposes a head and, below it, a torso three faces wide. The mask is where either says so.

`cam_grabcut_mask`, the method before the head, stays as the baseline `pstyle eval-subjects` scores
it against: the classifier's class activation map (Zhou et al. 2016) over the top classes, blended
with a centre prior and the person prior, refined by OpenCV's GrabCut (Rother et al. 2004).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from skimage.data import lbp_frontal_face_cascade_filename
from skimage.feature import Cascade
from torch import Tensor

from pstyle.models.backbone import IMAGENET_MEAN, IMAGENET_STD, efficientnet_lite0
from pstyle.models.subject_head import subject_probability

CAM_SIDE = 320  # the classifier sees the photo at this shorter side
TOP_CLASSES = 5  # CAMs of the most likely classes, weighted by their probabilities
CENTER_WEIGHT = 0.4  # share of the centre prior (photographers centre subjects; ImageNet has no "person")
CENTER_SIGMA = 0.5  # its Gaussian width, in half-image units
GRABCUT_SIDE = 256  # GrabCut runs at this shorter side (its cost grows with pixels)
GRABCUT_ITERATIONS = 5
PROBABLE_FG, CERTAIN_FG = 0.6, 0.85  # prior thresholds that seed GrabCut's foreground
FACE_SIDE = 256  # faces are searched at this shorter side
MIN_FACE = 0.08  # smaller faces (share of the shorter side) are background people or false hits
TORSO_PRIOR = 0.7  # probable foreground: GrabCut decides the torso's outline, the head is certain


@functools.cache
def _classifier(device: str) -> torch.nn.Module:
    return efficientnet_lite0().to(device)


@torch.no_grad()
def class_activation(images: Tensor) -> Tensor:
    """(B,3,H,W) in [0,1] -> (B,1,H,W) in [0,1]: where the top classes' evidence is, per image."""
    model = _classifier(str(images.device))
    h, w = images.shape[-2:]
    scale = CAM_SIDE / min(h, w)
    x = F.interpolate(
        images.float(), scale_factor=scale, mode="bilinear", antialias=True, align_corners=False
    )
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    feats = model.forward_features((x - mean) / std)  # (B, 1280, h/32, w/32)
    probs = model.forward_head(feats).softmax(dim=1)
    top_p, top_i = probs.topk(TOP_CLASSES, dim=1)  # (B, k)
    weights = model.get_classifier().weight[top_i]  # (B, k, 1280)
    cams = torch.einsum("bkc,bchw->bkhw", weights, feats).relu()
    cam = (cams * (top_p / top_p.sum(dim=1, keepdim=True))[:, :, None, None]).sum(dim=1, keepdim=True)
    cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
    return _unit_range(cam)


@functools.cache
def _face_detector() -> Cascade:
    return Cascade(lbp_frontal_face_cascade_filename())


def person_prior(image: Tensor) -> Tensor:
    """(3,H,W) in [0,1] -> (1,H,W): 1 on each detected face's head, TORSO_PRIOR on the torso below
    it (three face widths wide, to the bottom of the photo), 0 elsewhere."""
    h, w = image.shape[-2:]
    scale = FACE_SIDE / min(h, w)
    small = F.interpolate(image[None].float().cpu(), scale_factor=scale, mode="area")[0]
    rgb = _uint8_rgb(small)
    low = max(8, round(MIN_FACE * FACE_SIDE))
    faces = _face_detector().detect_multi_scale(
        img=rgb, scale_factor=1.2, step_ratio=1, min_size=(low, low), max_size=rgb.shape[:2]
    )
    prior = torch.zeros(1, h, w)
    for face in faces:
        top, left, side = (face[k] / scale for k in ("r", "c", "width"))
        rows, cols = slice(round(top + side), h), slice(max(0, round(left - side)), round(left + 2 * side))
        prior[:, rows, cols] = prior[:, rows, cols].clamp_min(TORSO_PRIOR)
        rows = slice(max(0, round(top - 0.3 * side)), round(top + 1.1 * side))
        prior[:, rows, max(0, round(left - 0.1 * side)) : round(left + 1.1 * side)] = 1.0
    return prior


def subject_prior(images: Tensor) -> Tensor:
    """(B,3,H,W) -> (B,1,H,W) in [0,1]: the class activation map blended with a centre prior, and
    raised to the person prior wherever a face was found.

    ImageNet has no person class, so on portraits the CAM lights up clothing or a face only; the
    centre prior fills in what photographers put in the middle.
    """
    h, w = images.shape[-2:]
    yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, h, device=images.device),
        torch.linspace(-1, 1, w, device=images.device),
        indexing="ij",
    )
    center = torch.exp(-(xx**2 + yy**2) / (2 * CENTER_SIGMA**2))[None, None]
    blob = _unit_range((1 - CENTER_WEIGHT) * class_activation(images) + CENTER_WEIGHT * center)
    return torch.maximum(blob, _people(images))


def _uint8_rgb(image: Tensor) -> np.ndarray:
    """(3,H,W) in [0,1] -> (H,W,3) uint8, the layout OpenCV and scikit-image detectors take."""
    return np.ascontiguousarray((image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8))


def _unit_range(x: Tensor) -> Tensor:
    """Min-max scale each image's map to [0, 1]."""
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    return (x - low) / (high - low).clamp_min(1e-6)


def refine_with_grabcut(image: Tensor, prior: Tensor, seed: int = 0) -> Tensor:
    """(3,H,W) image and (1,H,W) prior in [0,1] -> binary (1,H,W) subject mask from GrabCut.

    Seeds: prior >= PROBABLE_FG probable foreground (>= CERTAIN_FG certain), the rest probable
    background, and a thin image border certain background. Falls back to the thresholded prior when GrabCut
    cannot separate the two (a flat image). GrabCut's colour models start from k-means on OpenCV's
    global RNG, so `seed` is set first: the same photo always gets the same mask, whatever ran before.
    """
    h, w = image.shape[-2:]
    scale = min(1.0, GRABCUT_SIDE / min(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = F.interpolate(image[None].float(), size=size, mode="area")[0]
    p = F.interpolate(prior[None].float(), size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    rgb = _uint8_rgb(small)
    seeds = np.full(size, cv2.GC_PR_BGD, dtype=np.uint8)
    seeds[p >= PROBABLE_FG] = cv2.GC_PR_FGD
    seeds[p >= CERTAIN_FG] = cv2.GC_FGD
    border = max(1, min(size) // 64)
    edge = np.zeros(size, dtype=bool)
    edge[:border], edge[-border:], edge[:, :border], edge[:, -border:] = True, True, True, True
    seeds[edge & (p < PROBABLE_FG)] = cv2.GC_BGD
    fallback = torch.from_numpy((p >= 0.5).astype(np.float32))
    if not (seeds == cv2.GC_FGD).any() and not (seeds == cv2.GC_PR_FGD).any():
        mask = fallback
    else:
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.setRNGSeed(seed)
            cv2.grabCut(rgb, seeds, None, bgd, fgd, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
            mask = torch.from_numpy(((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).astype(np.float32))
        except cv2.error:
            mask = fallback
    mask = F.interpolate(mask[None, None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return (mask >= 0.5).to(image.dtype)


def _people(images: Tensor) -> Tensor:
    return torch.stack([person_prior(image) for image in images]).to(images.device)


@torch.no_grad()
def subject_mask(images: Tensor) -> Tensor:
    """(B,3,H,W) in [0,1] -> (B,1,H,W) binary masks of each photo's subject: where the subject head's
    probability or the person prior reaches 0.5. Deterministic: no random restarts to be lucky with."""
    return (torch.maximum(subject_probability(images), _people(images)) >= 0.5).to(images.dtype)


@torch.no_grad()
def cam_grabcut_mask(images: Tensor, seed: int = 0) -> Tensor:
    """(B,3,H,W) in [0,1] -> (B,1,H,W): the baseline's masks (`seed`: GrabCut's)."""
    prior = subject_prior(images).cpu()
    masks = [refine_with_grabcut(img.cpu(), p, seed) for img, p in zip(images, prior, strict=True)]
    return torch.stack(masks).to(images.device, images.dtype)

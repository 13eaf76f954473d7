"""Deterministic procedural dataset: content scenes with subject masks, and style images per "user".

Training, tuning and tests need data but must not depend on downloads. Everything here is drawn
from seeded numpy generators, so the same call writes byte-identical files on every machine.

A user is one style family plus one draw of its parameters (palette, frequencies, angles...). All of
a user's images share those parameters and differ only by a per-image generator (offsets, jitter,
small angle changes): one consistent style per user, clearly different styles across users.
"""

from __future__ import annotations

import colorsys
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pstyle.images import MIN_SIDE
from pstyle.store.atomic import atomic_directory

SYNTH_VERSION = 1  # bump whenever rendering changes, so stale datasets on disk are detected

Params = dict[str, Any]
Rng = np.random.Generator


@dataclass(frozen=True)
class StyleFamily:
    """A procedural style: `sample_params` draws one user's style, `render` draws one image of it."""

    sample_params: Callable[[Rng], Params]
    render: Callable[[Params, Rng, int], np.ndarray]  # (params, per-image rng, size) -> HxWx3 float32


# ---------------------------------------------------------------- shared helpers


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) pixel-centre coordinates in [0, 1], so parameters do not depend on the image size."""
    t = (np.arange(size, dtype=np.float64) + 0.5) / size
    return np.meshgrid(t, t, indexing="ij")


def _u(rng: Rng, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _i(rng: Rng, lo: int, hi: int) -> int:
    """Integer in [lo, hi] inclusive."""
    return int(rng.integers(lo, hi + 1))


def _hsv(h: float, s: float, v: float) -> list[float]:
    return [round(c, 4) for c in colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))]


def _palette(rng: Rng) -> list[list[float]]:
    """3-5 harmonious colours whose brightness spans dark to light, so every pattern has contrast."""
    k = _i(rng, 3, 5)
    base = rng.random()
    hue_offsets = [(0.0, 0.07, -0.07), (0.0, 0.5), (0.0, 1 / 3, 2 / 3), (0.0, 0.42, 0.58)][_i(rng, 0, 3)]
    values = rng.permutation(np.linspace(0.2, 0.95, k))
    return [
        _hsv(base + hue_offsets[j % len(hue_offsets)] + rng.normal(0, 0.02), _u(rng, 0.3, 1.0), values[j])
        for j in range(k)
    ]


def _map(t: np.ndarray, palette: list[list[float]], banded: bool = False) -> np.ndarray:
    """Map t in [0, 1] through a palette: a smooth gradient, or flat bands (posterised)."""
    pal = np.asarray(palette, dtype=np.float64)
    if banded:
        return pal[np.clip((t * len(pal)).astype(int), 0, len(pal) - 1)]
    stops = np.linspace(0.0, 1.0, len(pal))
    return np.stack([np.interp(t, stops, pal[:, c]) for c in range(3)], axis=-1)


def _normalise(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / max(float(a.max() - a.min()), 1e-8)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Smoothly interpolate a (g+1, g+1) lattice of values to size x size (value noise)."""
    g = grid.shape[0] - 1
    pos = (np.arange(size) + 0.5) * g / size
    i = np.minimum(pos.astype(int), g - 1)
    t = pos - i
    t = t * t * (3 - 2 * t)  # smoothstep: no visible lattice creases
    rows = grid[i] * (1 - t)[:, None] + grid[i + 1] * t[:, None]
    return rows[:, i] * (1 - t)[None, :] + rows[:, i + 1] * t[None, :]


def _noise(rng: Rng, size: int, freq: float, octaves: int = 4, persistence: float = 0.5) -> np.ndarray:
    """Fractal value noise in [0, 1]; `freq` is the number of lattice cells across the first octave."""
    out, amp = np.zeros((size, size)), 1.0
    for o in range(octaves):
        g = max(1, round(freq * 2**o))
        out += amp * _upsample(rng.random((g + 1, g + 1)), size)
        amp *= persistence
    return _normalise(out)


def _coverage(dist: np.ndarray, radius: np.ndarray | float, px: float) -> np.ndarray:
    """Antialiased inside-ness of `dist < radius`, with a one-pixel (`px`) soft edge."""
    return np.clip((radius - dist) / px + 0.5, 0.0, 1.0)


def _finish(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- style families


def _stripes_params(rng: Rng) -> Params:
    return {
        "palette": _palette(rng),
        "angle": _u(rng, 0, 180),
        "freq": _u(rng, 3, 14),  # colour bands across the image
        "softness": _u(rng, 0.02, 0.3),
        "wobble": _u(rng, 0.0, 0.04),
        "wobble_freq": _u(rng, 1, 4),
    }


def _stripes(p: Params, rng: Rng, size: int) -> np.ndarray:
    y, x = _coords(size)
    a = math.radians(p["angle"] + rng.normal(0, 4))
    along, across = x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)
    along = along + p["wobble"] * np.sin(2 * math.pi * (p["wobble_freq"] * across + rng.random()))
    t = along * p["freq"] + rng.random() * len(p["palette"])
    band, frac = np.floor(t).astype(int), t - np.floor(t)
    pal = np.asarray(p["palette"])
    blend = np.clip((frac - 1 + p["softness"]) / p["softness"], 0, 1)[..., None]  # soften band edges
    return _finish(pal[band % len(pal)] * (1 - blend) + pal[(band + 1) % len(pal)] * blend)


def _dots_params(rng: Rng) -> Params:
    return {
        "palette": _palette(rng),  # [0] is the background, the rest colour the dots
        "cells": _u(rng, 4, 12),
        "radius": _u(rng, 0.18, 0.42),  # fraction of a cell
        "jitter": _u(rng, 0.0, 0.2),
        "stagger": bool(rng.random() < 0.5),
    }


def _dots(p: Params, rng: Rng, size: int) -> np.ndarray:
    y, x = _coords(size)
    n = p["cells"]
    u, v = x * n + rng.random(), y * n + rng.random()
    row = np.floor(v).astype(int)
    if p["stagger"]:
        u = u + 0.5 * (row % 2)
    col = np.floor(u).astype(int)
    cells = math.ceil(n) + 2
    jitter = rng.uniform(-p["jitter"], p["jitter"], (cells, cells, 2))
    radius = p["radius"] * rng.uniform(0.85, 1.15, (cells, cells))
    pal = np.asarray(p["palette"])
    colour = pal[1:][rng.integers(0, len(pal) - 1, (cells, cells))]
    dist = np.hypot(u - col - 0.5 - jitter[row, col, 0], v - row - 0.5 - jitter[row, col, 1])
    inside = _coverage(dist, radius[row, col], n / size)[..., None]
    return _finish(pal[0] * (1 - inside) + colour[row, col] * inside)


def _turbulence_params(rng: Rng) -> Params:
    return {
        "palette": _palette(rng),
        "freq": _u(rng, 1.5, 6),
        "octaves": _i(rng, 3, 6),
        "persistence": _u(rng, 0.35, 0.7),
        "ridged": bool(rng.random() < 0.5),  # creases like marble veins instead of soft clouds
        "banded": bool(rng.random() < 0.3),
    }


def _turbulence(p: Params, rng: Rng, size: int) -> np.ndarray:
    t = _noise(rng, size, p["freq"], p["octaves"], p["persistence"])
    if p["ridged"]:
        t = _normalise(1 - np.abs(2 * t - 1))
    return _finish(_map(t, p["palette"], p["banded"]))


def _strokes_params(rng: Rng) -> Params:
    return {
        "palette": _palette(rng),
        "angle": _u(rng, 0, 180),
        "spread": _u(rng, 5, 50),  # degrees of disorder around the main direction
        "length": _u(rng, 0.08, 0.2),
        "width": _u(rng, 0.02, 0.045),
        "density": _u(rng, 1.0, 2.0),  # how many times the strokes cover the canvas
        "under_freq": _u(rng, 1.5, 4),
    }


def _strokes(p: Params, rng: Rng, size: int) -> np.ndarray:
    """Short oriented brush strokes over an underpainting they take their colour from."""
    under = _map(_noise(rng, size, p["under_freq"], 3, 0.5), p["palette"])
    img = under.copy()
    half_w = p["width"] * size / 2
    for _ in range(int(p["density"] / (p["length"] * p["width"]))):
        cx, cy = rng.uniform(-0.05, 1.05, 2) * size
        a = math.radians(p["angle"] + rng.normal(0, p["spread"]))
        half_len = p["length"] * size * rng.uniform(0.35, 0.65)
        dx, dy = math.cos(a) * half_len, math.sin(a) * half_len
        colour = under[min(max(int(cy), 0), size - 1), min(max(int(cx), 0), size - 1)] * rng.uniform(0.9, 1.1)
        x0, x1 = max(0, int(cx - abs(dx) - half_w - 1)), min(size, int(cx + abs(dx) + half_w + 2))
        y0, y1 = max(0, int(cy - abs(dy) - half_w - 1)), min(size, int(cy + abs(dy) + half_w + 2))
        if x0 >= x1 or y0 >= y1:
            continue
        rx = np.arange(x0, x1) + 0.5 - cx
        ry = (np.arange(y0, y1) + 0.5 - cy)[:, None]
        along = np.clip((rx * dx + ry * dy) / half_len**2, -1, 1)  # -1..1 from tail to head
        dist = np.hypot(rx - along * dx, ry - along * dy)
        alpha = 0.9 * _coverage(dist, half_w, 1.0)[..., None]
        shade = (1 + 0.12 * along)[..., None]  # a brush leaves more paint where it lands
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - alpha) + colour * shade * alpha
    return _finish(img)


def _mosaic_params(rng: Rng) -> Params:
    return {
        "palette": _palette(rng),
        "cells": _i(rng, 25, 140),
        "regular": bool(rng.random() < 0.5),  # jittered grid (tiles) vs random points (crazy paving)
        "grout": _hsv(rng.random(), _u(rng, 0, 0.3), _u(rng, 0.03, 0.25)),
        "grout_width": _u(rng, 0.003, 0.012),
        "tile_jitter": _u(rng, 0.03, 0.15),
    }


def _mosaic(p: Params, rng: Rng, size: int) -> np.ndarray:
    """Voronoi tiles, each one palette colour with slight variation, separated by dark grout."""
    y, x = _coords(size)
    if p["regular"]:
        g = round(math.sqrt(p["cells"]))
        gy, gx = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
        pts = (np.stack([gx.ravel(), gy.ravel()], 1) + 0.5 + rng.uniform(-0.35, 0.35, (g * g, 2))) / g
    else:
        pts = rng.random((p["cells"], 2))
    d2 = (x.reshape(-1, 1) - pts[:, 0]) ** 2 + (y.reshape(-1, 1) - pts[:, 1]) ** 2
    rows = np.arange(len(d2))
    nearest = d2.argmin(1)
    near_d2 = d2[rows, nearest]
    d2[rows, nearest] = np.inf
    second = d2.argmin(1)
    gap = np.linalg.norm(pts[nearest] - pts[second], axis=1)
    edge = (d2[rows, second] - near_d2) / (2 * gap)  # exact distance to the shared cell border
    pal = np.asarray(p["palette"])
    tiles = pal[rng.integers(0, len(pal), len(pts))] * (1 + p["tile_jitter"] * rng.normal(size=(len(pts), 1)))
    grout = _coverage(edge, p["grout_width"], 1 / size)[:, None]
    img = tiles[nearest] * (1 - grout) + np.asarray(p["grout"]) * grout
    return _finish(img.reshape(size, size, 3))


def _waves_params(rng: Rng) -> Params:
    n = _i(rng, 2, 4)
    return {
        "palette": _palette(rng),
        "radial": bool(rng.random() < 0.5),
        "freqs": [_u(rng, 3, 14) for _ in range(n)],  # cycles across the image, one per source
        "angles": [_u(rng, 0, 180) for _ in range(n)],  # directions of plane waves (radial=False)
        "banded": bool(rng.random() < 0.5),
    }


def _waves(p: Params, rng: Rng, size: int) -> np.ndarray:
    """Interference of a few concentric or plane waves, mapped through the palette."""
    y, x = _coords(size)
    total = np.zeros((size, size))
    for f, angle in zip(p["freqs"], p["angles"], strict=True):
        if p["radial"]:
            cx, cy = rng.uniform(-0.3, 1.3, 2)
            r = np.hypot(x - cx, y - cy)
        else:
            a = math.radians(angle + rng.normal(0, 5))
            r = x * math.cos(a) + y * math.sin(a)
        total += np.sin(2 * math.pi * (f * r + rng.random()))
    return _finish(_map(_normalise(total), p["palette"], p["banded"]))


def _plaid_params(rng: Rng) -> Params:
    pal = _palette(rng)
    return {
        "palette": pal,
        "sett": [[_i(rng, 0, len(pal) - 1), _u(rng, 0.01, 0.07)] for _ in range(_i(rng, 4, 8))],
        "angle": _u(rng, 0, 90),
    }


def _plaid(p: Params, rng: Rng, size: int) -> np.ndarray:
    """Tartan: the same sequence of coloured bands (the sett) in warp and weft, woven 2/2 twill."""
    y, x = _coords(size)
    a = math.radians(p["angle"] + rng.normal(0, 2))
    pal = np.asarray(p["palette"])
    colours = pal[[c for c, _ in p["sett"]]]
    edges = np.cumsum([w for _, w in p["sett"]])

    def bands(t: np.ndarray) -> np.ndarray:
        return colours[np.searchsorted(edges, (t + rng.random() * edges[-1]) % edges[-1], side="right")]

    warp = bands(x * math.cos(a) + y * math.sin(a))
    weft = bands(-x * math.sin(a) + y * math.cos(a))
    i, j = np.indices((size, size))
    warp_on_top = ((i + j) % 4 < 2)[..., None]
    return _finish(np.where(warp_on_top, warp, weft))


def _halftone_params(rng: Rng) -> Params:
    pal = sorted(_palette(rng), key=sum)
    return {
        "paper": [round(0.5 + c / 2, 4) for c in pal[-1]],  # the lightest colour, lifted to paper
        "inks": pal[: _i(rng, 1, min(3, len(pal) - 1))],
        "cell": _u(rng, 0.025, 0.07),  # dot pitch as a fraction of the image
        "angle": _u(rng, 0, 90),
        "tone_freq": _u(rng, 1.5, 4),
    }


def _halftone(p: Params, rng: Rng, size: int) -> np.ndarray:
    """Print-like halftone: per ink, a rotated dot screen whose dot size follows a tone field."""
    y, x = _coords(size)
    img = np.broadcast_to(np.asarray(p["paper"]), (size, size, 3)).copy()
    for k, ink in enumerate(p["inks"]):
        tone = _noise(rng, size, p["tone_freq"], 3, 0.5)
        a = math.radians(p["angle"] + 30 * k + rng.normal(0, 2))
        u = (x * math.cos(a) + y * math.sin(a)) / p["cell"] + rng.random()
        v = (-x * math.sin(a) + y * math.cos(a)) / p["cell"] + rng.random()
        dist = np.hypot(u - np.floor(u) - 0.5, v - np.floor(v) - 0.5)
        cov = _coverage(dist, 0.72 * np.sqrt(tone), 1 / (size * p["cell"]))[..., None]
        img *= 1 - cov * (1 - np.asarray(ink))  # inks multiply like real print
    return _finish(img)


FAMILIES: dict[str, StyleFamily] = {
    "stripes": StyleFamily(_stripes_params, _stripes),
    "dots": StyleFamily(_dots_params, _dots),
    "turbulence": StyleFamily(_turbulence_params, _turbulence),
    "strokes": StyleFamily(_strokes_params, _strokes),
    "mosaic": StyleFamily(_mosaic_params, _mosaic),
    "waves": StyleFamily(_waves_params, _waves),
    "plaid": StyleFamily(_plaid_params, _plaid),
    "halftone": StyleFamily(_halftone_params, _halftone),
}


# ---------------------------------------------------------------- content scenes


def _background(rng: Rng, size: int) -> np.ndarray:
    """Sky gradient with soft clouds above a textured ground band with a gently curved horizon."""
    y, x = _coords(size)
    top = np.asarray(_hsv(_u(rng, 0.5, 0.72), _u(rng, 0.3, 0.8), _u(rng, 0.55, 0.95)))
    low = np.asarray(_hsv(_u(rng, 0.0, 1.0), _u(rng, 0.1, 0.5), _u(rng, 0.8, 1.0)))
    hills = _u(rng, 0, 0.04) * np.sin(2 * math.pi * (_u(rng, 0.5, 2) * x + rng.random()))
    horizon = _u(rng, 0.5, 0.78) + hills
    sky = top + (low - top) * np.clip(y / horizon, 0, 1)[..., None]
    clouds = np.clip((_noise(rng, size, 3, 4) - 0.55) / 0.25, 0, 1) * _u(rng, 0.0, 0.8)
    sky = sky + (0.97 - sky) * clouds[..., None]
    ground_colour = np.asarray(_hsv(rng.random(), _u(rng, 0.3, 0.8), _u(rng, 0.3, 0.7)))
    depth = np.clip((y - horizon) / (1 - horizon), 0, 1)  # darker toward the viewer
    texture = 0.75 + 0.5 * _noise(rng, size, 8, 3)
    ground = ground_colour * (texture * (1 - 0.35 * depth))[..., None]
    return np.where((y >= horizon)[..., None], ground, sky)


def _shape(rng: Rng, size: int, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    """One random ellipse / rounded rectangle / convex polygon: (mask bool HxW, shading HxW)."""
    y, x = _coords(size)
    r = _u(rng, 0.1, 0.28)
    a = rng.uniform(0, math.pi)
    u = (x - cx) * math.cos(a) + (y - cy) * math.sin(a)
    v = -(x - cx) * math.sin(a) + (y - cy) * math.cos(a)
    kind = _i(rng, 0, 2)
    if kind == 0:  # ellipse, shaded like a sphere
        d2 = (u / r) ** 2 + (v / (r * _u(rng, 0.5, 1))) ** 2
        mask = d2 <= 1
        shade = 0.55 + 0.45 * np.sqrt(np.clip(1 - d2, 0, 1))
    elif kind == 1:  # rounded rectangle (signed distance)
        hw, hh = r, r * _u(rng, 0.4, 1)
        rad = _u(rng, 0.0, 0.6) * min(hw, hh)
        qu, qv = np.abs(u) - hw + rad, np.abs(v) - hh + rad
        sd = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0)) + np.minimum(np.maximum(qu, qv), 0) - rad
        mask = sd <= 0
        shade = np.ones_like(u)
    else:  # convex polygon: points on an ellipse, in angular order, are always convex
        n = _i(rng, 3, 6)
        t = np.sort(rng.uniform(0, 2 * math.pi, n))
        px, py = r * np.cos(t), r * _u(rng, 0.6, 1) * np.sin(t)
        mask = np.ones_like(u, dtype=bool)
        for k in range(n):
            ex, ey = px[(k + 1) % n] - px[k], py[(k + 1) % n] - py[k]
            mask &= ex * (v - py[k]) - ey * (u - px[k]) >= 0
        shade = np.ones_like(u)
    light = rng.uniform(0, 2 * math.pi)  # directional light: a linear gradient across the shape
    lit = np.clip((math.cos(light) * (x - cx) + math.sin(light) * (y - cy)) / r, -1, 1)
    shade = shade * (0.85 + 0.15 * lit)
    return mask, shade


def make_scene(rng: Rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A content image (HxWx3 float32 in [0, 1]) and its subject mask (HxW float32 in {0, 1}).

    The subject is 1-3 shaded shapes; their union is the mask. Draws are repeated (from the same
    generator, so still deterministic) until the subject covers 10-45% of the image.
    """
    img = _background(rng, size)
    while True:
        gx, gy = _u(rng, 0.3, 0.7), _u(rng, 0.35, 0.65)
        n = _i(rng, 1, 3)
        shapes = [_shape(rng, size, gx + rng.normal(0, 0.1), gy + rng.normal(0, 0.1)) for _ in range(n)]
        union = np.logical_or.reduce([m for m, _ in shapes])
        if 0.1 <= union.mean() <= 0.45:
            break
    for mask, shade in shapes:
        colour = np.asarray(_hsv(rng.random(), _u(rng, 0.4, 1), _u(rng, 0.5, 1)))
        img = np.where(mask[..., None], colour * shade[..., None], img)
    return _finish(img), union.astype(np.float32)


# ---------------------------------------------------------------- dataset on disk


def user_style(u: int, seed: int) -> tuple[str, Params]:
    """Procedural user `u`'s family and style parameters. Families are cycled, so every family
    appears once there are at least len(FAMILIES) users."""
    names = list(FAMILIES)
    family = names[u % len(names)]
    return family, FAMILIES[family].sample_params(np.random.default_rng([seed, 1, u]))


def _users(n_users: int, seed: int) -> dict[str, Params]:
    users = {}
    for u in range(n_users):
        family, params = user_style(u, seed)
        users[f"{family}-{u:03d}"] = {"family": family, "params": params}
    return users


def _read_manifest(out: Path) -> Params | None:
    try:
        return json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _save_png(a: np.ndarray, path: Path) -> None:
    Image.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)).save(path, format="PNG")


def synthesize(
    out: str | Path,
    n_content: int = 64,
    n_users: int = 24,
    images_per_user: int = 6,
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Write the dataset to `out` (content/images, content/masks, styles/<user_id>, manifest.json).

    Idempotent: if `out` already holds this exact dataset, return at once; if it holds anything
    else, raise rather than mix two datasets. The folder is built as a temp sibling and renamed
    into place, so a crash or a concurrent writer never leaves a half-written dataset behind.
    Every item has its own generator keyed by (seed, kind, index), so growing n_users or
    n_content leaves the existing items unchanged.
    """
    if size < MIN_SIDE:
        raise ValueError(
            f"size must be at least {MIN_SIDE} (smaller images are rejected on load), got {size}"
        )
    out = Path(out)
    manifest = {
        "version": SYNTH_VERSION,
        "seed": seed,
        "size": size,
        "n_content": n_content,
        "images_per_user": images_per_user,
        "families": list(FAMILIES),
        "users": _users(n_users, seed),
    }
    manifest = json.loads(json.dumps(manifest))  # compare exactly as it would read back from disk
    existing = _read_manifest(out)
    if existing == manifest:
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if existing is None:
            raise FileExistsError(f"{out} exists and is not a pstyle synth dataset; choose another folder")
        differ = ", ".join(k for k in manifest if existing.get(k) != manifest[k])
        raise FileExistsError(
            f"{out} holds a different synth dataset (differs in: {differ}); "
            "delete it or choose another folder"
        )

    try:
        with atomic_directory(out) as tmp:
            _write_dataset(tmp, manifest, n_content, n_users, images_per_user, size, seed)
    except OSError:
        if _read_manifest(out) != manifest:  # a concurrent writer finishing the same data is fine
            raise
    return out


def _write_dataset(
    tmp: Path, manifest: dict, n_content: int, n_users: int, images_per_user: int, size: int, seed: int
) -> None:
    for sub in ("content/images", "content/masks", "styles"):
        (tmp / sub).mkdir(parents=True)
    total = n_content + n_users * images_per_user
    with tqdm(total=total, desc="synthesize", unit="img", disable=None) as bar:
        for i in range(n_content):
            img, mask = make_scene(np.random.default_rng([seed, 0, i]), size)
            _save_png(img, tmp / "content/images" / f"{i:05d}.png")
            _save_png(mask, tmp / "content/masks" / f"{i:05d}.png")
            bar.update()
        for u, (user_id, user) in enumerate(manifest["users"].items()):
            (tmp / "styles" / user_id).mkdir()
            family = FAMILIES[user["family"]]
            for k in range(images_per_user):
                img = family.render(user["params"], np.random.default_rng([seed, 2, u, k]), size)
                _save_png(img, tmp / "styles" / user_id / f"{k:03d}.png")
                bar.update()
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))


def scene_tensors(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """n procedural content scenes as a (n, 3, size, size) tensor, without touching disk.

    Adapter fine-tuning needs content images only as a generic canvas; when the user supplies none,
    these stand in.
    """
    rng = np.random.default_rng(seed)
    return torch.stack([torch.from_numpy(make_scene(rng, size)[0]).permute(2, 0, 1) for _ in range(n)])

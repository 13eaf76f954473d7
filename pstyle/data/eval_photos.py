"""The independent real-photo evaluation set: scikit-image's bundled images, never trained on.

Content photos have a clear subject (their hand-labelled masks are in `subject_masks.json`); style
images are real textures, an astronomy image and micrographs. `export` writes them as plain image
folders, so `pstyle eval --content DIR --styles DIR` scores any other set the same way.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from PIL import Image

CONTENT = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
    "camera": "camera.png",
    "clock": "clock_motion.png",
    "coins": "coins.png",
}
STYLES = {
    "hubble": "hubble_deep_field.jpg",
    "ihc": "ihc.png",
    "retina": "retina.jpg",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
}


def _data_dir() -> Path:
    try:
        return Path(str(resources.files("skimage").joinpath("data")))
    except ModuleNotFoundError as exc:
        raise FileNotFoundError("the evaluation photos need scikit-image: pip install scikit-image") from exc


def content_paths() -> dict[str, Path]:
    return {name: _data_dir() / file for name, file in CONTENT.items()}


def style_paths() -> dict[str, Path]:
    return {name: _data_dir() / file for name, file in STYLES.items()}


def export(out: Path) -> tuple[Path, Path]:
    """Write the set as RGB PNGs to out/content and out/styles; returns those two folders."""
    out = Path(out)
    folders = []
    for sub, paths in (("content", content_paths()), ("styles", style_paths())):
        folder = out / sub
        folder.mkdir(parents=True, exist_ok=True)
        for name, path in paths.items():
            Image.open(path).convert("RGB").save(folder / f"{name}.png")
        folders.append(folder)
    return folders[0], folders[1]

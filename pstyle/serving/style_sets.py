"""A user's style set in the store: the images their zero-shot renders and adapter training start from.

Layout (all under the user's own prefix, so no key of one user can name another's images):

    users/<user>/styles/<sha256>.png    each image, decoded, normalised to RGB PNG, content-addressed
    users/<user>/style_set.json         the current set: {"set": <hash of its image hashes>, "images": [...]}

Replacing a set uploads the new images first and then rewrites the one pointer, so a reader sees the
old set or the new one, never a mix. `user_entry` turns the set plus the user's rated outputs into the
adapter-job manifest entry that `pstyle.distributed.adapter_jobs` trains from.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from pstyle.ids import validate_id
from pstyle.images import ImageError, open_image, resize_shorter_side, to_tensor
from pstyle.store import KeyNotFound, Store
from pstyle.store.events import read_events

MAX_STYLE_IMAGES = 16
STORED_SIDE_MAX = 512  # style images are stored at most this large on their shorter side


class StyleSetError(ValueError):
    """A style set that cannot be stored (count, or a file that is not a usable image)."""


@dataclass(frozen=True)
class StyleSet:
    user_id: str
    digest: str  # changes whenever any image of the set changes: the style-code cache key
    images: tuple[str, ...]  # store keys
    names: tuple[str, ...]  # the uploaded file names, for listing
    created: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "set": self.digest,
            "images": list(self.images),
            "names": list(self.names),
            "created": self.created,
        }


def pointer_key(user_id: str) -> str:
    return f"users/{validate_id(user_id)}/style_set.json"


def style_key(user_id: str, image_id: str) -> str:
    """Where a style image lives: content-addressed (its PNG's sha256) under the user's prefix."""
    return f"users/{validate_id(user_id)}/styles/{image_id}.png"


def outputs_prefix(user_id: str) -> str:
    """Where the service keeps the images it returned, so a rating can later train on the image rated."""
    return f"users/{validate_id(user_id)}/outputs"


def decode_styles(
    files: list[tuple[str, bytes]], max_pixels: int, max_images: int = MAX_STYLE_IMAGES
) -> list[Image.Image]:
    """Each upload decoded, upright RGB, at most STORED_SIDE_MAX on its shorter side; or StyleSetError
    naming the first bad file. Between 1 and `max_images` files."""
    if not 1 <= len(files) <= max_images:
        raise StyleSetError(f"a style set has 1 to {max_images} images, got {len(files)}")
    images = []
    for name, data in files:
        try:
            image = open_image(
                data, name, max_pixels=max_pixels, single_frame=True, draft_side=STORED_SIDE_MAX
            )
        except ImageError as exc:
            raise StyleSetError(f"style image {exc}") from None
        images.append(
            resize_shorter_side(image, STORED_SIDE_MAX) if min(image.size) > STORED_SIDE_MAX else image
        )
    return images


def _png(image: Image.Image) -> bytes:
    """PNG bytes (metadata dropped): what the store keeps of an upload."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def set_digest(images: list[str]) -> str:
    return hashlib.sha256("\n".join(images).encode()).hexdigest()[:32]


class StyleSets:
    """Read and replace users' style sets in one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def put(self, user_id: str, files: list[tuple[str, bytes]], max_pixels: int = 25_000_000) -> StyleSet:
        """Validate every file, store the images, then switch the pointer (the atomic step)."""
        validate_id(user_id)
        keys = []
        for png in map(_png, decode_styles(files, max_pixels)):
            key = style_key(user_id, hashlib.sha256(png).hexdigest())
            if not self.store.exists(key):
                self.store.put_bytes(key, png)
            keys.append(key)
        style_set = StyleSet(user_id, set_digest(keys), tuple(keys), tuple(n for n, _ in files), time.time())
        self.store.put_bytes(pointer_key(user_id), json.dumps(style_set.to_dict()).encode())
        return style_set

    def get(self, user_id: str) -> StyleSet | None:
        try:
            data = json.loads(self.store.get_bytes(pointer_key(user_id)))
        except KeyNotFound:
            return None
        return StyleSet(user_id, data["set"], tuple(data["images"]), tuple(data["names"]), data["created"])

    def image(self, user_id: str, image_id: str) -> bytes | None:
        """The PNG of image `image_id` (its content hash) if it is in the user's current set, else None:
        a user can only ever name keys under their own prefix, and only the set they have now."""
        style_set = self.get(user_id)
        key = style_key(user_id, image_id)
        if style_set is None or key not in style_set.images:
            return None
        return self.store.get_bytes(key)

    def load(self, style_set: StyleSet, size: int) -> torch.Tensor:
        """The set's images as one (K, 3, size, size) batch for the style encoder."""
        return torch.stack(
            [to_tensor(open_image(self.store.get_bytes(k), k), size) for k in style_set.images]
        )


def user_entry(
    store: Store, user_id: str, feedback: Iterable[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The adapter-job manifest entry for one user: their style set, and every output they rated that
    the service kept (latest rating per image wins). `feedback`: the user's feedback events, when the
    caller already read them (default: read from the store)."""
    style_set = StyleSets(store).get(user_id)
    if style_set is None:
        raise StyleSetError(f"user {user_id!r} has no style set: PUT images to /v1/me/styles first")
    rated: dict[str, Any] = {}
    for event in read_events(store, "feedback", user_id=user_id) if feedback is None else feedback:
        if isinstance(event.get("image"), str):
            rated[event["image"]] = event.get("rating")
    prefix = outputs_prefix(user_id) + "/"
    feedback_rows = [{"image": k, "rating": r} for k, r in rated.items() if k.startswith(prefix)]
    return {"styles": list(style_set.images), "feedback": feedback_rows}

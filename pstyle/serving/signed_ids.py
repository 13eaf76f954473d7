"""Signed image ids: who an output belongs to and what made it, without a store write per image.

An id is `<payload>.<mac>`: the payload (base64url JSON: user, adapter version, experiment, variant,
nonce) signed with HMAC-SHA256 under a secret kept in the store. Feedback carries the id back; a
valid MAC proves the server issued it, and the payload's user must be the caller, so nobody can rate
(or learn anything about) another user's images.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
from typing import Any

from pstyle.store import KeyExists, Store

SECRET_KEY = "serve/image-id-secret"


def load_secret(store: Store, key: str = SECRET_KEY) -> bytes:
    """A deployment secret (by default the image-id signing one), created once under `key`
    (create-if-absent: replicas agree on it). Each use names its own key, so no two share one."""
    with contextlib.suppress(KeyExists):
        store.put_bytes(key, secrets.token_bytes(32), if_absent=True)
    return store.get_bytes(key)


class ImageIds:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, payload: str) -> str:
        return hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self, **fields: Any) -> str:
        data = json.dumps({**fields, "nonce": secrets.token_hex(8)}, separators=(",", ":")).encode()
        payload = base64.urlsafe_b64encode(data).decode().rstrip("=")
        return f"{payload}.{self._mac(payload)}"

    def verify(self, image_id: str) -> dict[str, Any]:
        """The fields an id was issued with; ValueError for anything this server did not issue."""
        payload, _, mac = str(image_id).partition(".")
        if not payload or not hmac.compare_digest(mac, self._mac(payload)):
            raise ValueError("unknown image id")
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))

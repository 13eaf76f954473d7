"""API keys: one per user, stored only as an HMAC-SHA256 digest under a server secret.

A key reads `psk.<user_id>.<secret>` (secret: 32 random bytes, URL-safe base64). The user id in the
key says which record to check; the record, `users/<user_id>/apikey.json`, holds
HMAC-SHA256(server secret, key) in hex and the admin flag, never the key. The server secret is its own
store object (`API_KEY_SECRET`, created once like the image-id secret and never shared with it).

Why a fast keyed hash and not scrypt: slow, salted hashes exist to make guessing a *low-entropy*
password from its stored hash expensive. A key carries 256 random bits, so guessing is hopeless at
any hash speed and the slowness only bought per-request CPU, which scrypt's callers then hid behind a
cache of verified keys that made revocation lag. HMAC costs microseconds, so every request reads the
record and checks it: revoking or rotating a key takes effect on the next request, in every process.
The secret means a copy of the records alone cannot even test a candidate key.

A server may trust a record it read for `ttl_s` (re-reading it in the background after that), and
keep using it while the store is unreachable (`max_stale_s`): a slow or failing store then delays
revocation by that much instead of failing every request. The default, 0, reads on every call.

Records written by earlier versions (`"algorithm": "scrypt"`) are refused, not verified: checking
them would bring back the per-request scrypt cost. Their users get the usual 401 and the server logs
that the key must be rotated (`pstyle users create USER --rotate`, which keeps the admin flag).
Losing or replacing the server secret invalidates every key at once, the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from pstyle.ids import validate_id
from pstyle.serving.signed_ids import load_secret
from pstyle.serving.stale_cache import StaleCache
from pstyle.store import KeyExists, KeyNotFound, Store

KEY_PREFIX = "psk"
MAX_KEY_LENGTH = 256
ALGORITHM = "hmac-sha256"
API_KEY_SECRET = "serve/api-key-secret"
AUTH_FAILED = "invalid or missing API key"  # one message for every failure: reveals nothing

log = logging.getLogger(__name__)


class AuthError(Exception):
    """Missing, malformed, unknown, revoked or wrong API key (HTTP 401)."""


@dataclass(frozen=True)
class Principal:
    """Who a verified key belongs to."""

    user_id: str
    admin: bool = False


def record_key(user_id: str) -> str:
    return f"users/{validate_id(user_id)}/apikey.json"


def digest(secret: bytes, key: str) -> str:
    """What a record stores for `key`: HMAC-SHA256 under the server secret, hex."""
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def _parse(key: object) -> str | None:
    """The user id a well-formed key names, else None (format only: nothing is looked up)."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        return None
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[2]:
        return None
    try:
        return validate_id(parts[1])
    except ValueError:
        return None


def create_user(store: Store, user_id: str, admin: bool | None = None, rotate: bool = False) -> str:
    """Create `user_id`'s API key and return it: the only time the plaintext exists.

    Refuses (ValueError) when the user already has a key, unless `rotate`: then the new key replaces
    the old one, which stops working at once. `admin=None` means False for a new user and "keep the
    current flag" on rotation.
    """
    key_name = record_key(user_id)  # validates before anything touches the store
    current_admin = False
    if rotate and admin is None and store.exists(key_name):
        current_admin = bool(json.loads(store.get_bytes(key_name)).get("admin", False))
    key = f"{KEY_PREFIX}.{user_id}.{secrets.token_urlsafe(32)}"
    record = {
        "algorithm": ALGORITHM,
        "digest": digest(load_secret(store, API_KEY_SECRET), key),
        "admin": current_admin if admin is None else bool(admin),
        "created": time.time(),
    }
    data = json.dumps(record).encode()
    if rotate:
        store.put_bytes(key_name, data)
    else:
        try:
            store.put_bytes(key_name, data, if_absent=True)
        except KeyExists:
            raise ValueError(
                f"user {user_id!r} already has an API key: rotate it to issue a new one"
            ) from None
    return key


class ApiKeys:
    """Verify API keys against the store: one record read (see the module on `ttl_s`) and one HMAC
    per call; the server secret is read on first use, so building one touches no storage."""

    def __init__(self, store: Store, ttl_s: float = 0.0, max_stale_s: float = 0.0) -> None:
        self.store = store
        self._secret: bytes | None = None
        self._records: StaleCache[str, dict[str, Any]] = StaleCache(ttl_s, max_stale_s, name="api-keys")

    def authenticate(self, key: str | None) -> Principal:
        """The key's Principal, or AuthError (same message whatever was wrong)."""
        user_id = _parse(key)
        if user_id is None or not isinstance(key, str):
            raise AuthError(AUTH_FAILED)
        if self._secret is None:  # racing threads read the same create-once secret
            self._secret = load_secret(self.store, API_KEY_SECRET)
        presented = digest(self._secret, key)
        try:
            record = self._records.get(user_id, partial(self._read_record, user_id))
            algorithm, stored, admin = record["algorithm"], record.get("digest"), record.get("admin", False)
        except (KeyNotFound, ValueError, KeyError, TypeError):  # unknown user or unreadable record
            raise AuthError(AUTH_FAILED) from None
        if algorithm == "scrypt":
            log.warning(
                "refused %s's API key: its record predates HMAC keys; rotate it with "
                "`pstyle users create %s --rotate`",
                user_id,
                user_id,
            )
        if (
            algorithm != ALGORITHM
            or not isinstance(stored, str)
            or not hmac.compare_digest(presented.encode(), stored.encode())
        ):
            raise AuthError(AUTH_FAILED)
        return Principal(user_id, bool(admin))

    @property
    def stale_served(self) -> int:
        """Requests verified against a record the store could not confirm just then."""
        return self._records.stale_served

    def _read_record(self, user_id: str) -> dict[str, Any]:
        return json.loads(self.store.get_bytes(record_key(user_id)))

    def revoke(self, user_id: str) -> None:
        """Delete the user's key record: the key stops working on its next request, everywhere."""
        self.store.delete(record_key(user_id))

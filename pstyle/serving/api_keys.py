"""API keys: one per user, stored only as a salted scrypt hash in the artifact store.

A key reads `psk.<user_id>.<secret>` (secret: 32 random bytes, URL-safe base64). The user id in the
key says which record to check; the record, `users/<user_id>/apikey.json`, holds the scrypt
parameters, salt and hash, never the key. Parameters live in each record, so raising them later only
affects keys created (or rotated) afterwards, and old records keep verifying.

scrypt is deliberately slow (tens of ms with the defaults on one core), so `ApiKeys` remembers keys it
verified — by their sha256, never the plaintext — for `cache_ttl_s`: a client pays the slow hash once
per TTL, not per request. Consequence: revoking or rotating a key takes up to `cache_ttl_s` to reach
other processes (and other `ApiKeys` instances) that verified it recently; `ApiKeys.revoke` evicts its
own cache at once. A wrong key is never cached as valid.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pstyle.ids import validate_id
from pstyle.store import KeyExists, KeyNotFound, Store

KEY_PREFIX = "psk"
MAX_KEY_LENGTH = 256
# Tens of ms per hash on one core: slow for guessing, cheap once per cached key.
SCRYPT_PARAMS = {"n": 2**13, "r": 8, "p": 1}
DKLEN = 32
MAX_CACHE_ENTRIES = 100_000
AUTH_FAILED = "invalid or missing API key"  # one message for every failure: reveals nothing


class AuthError(Exception):
    """Missing, malformed, unknown, revoked or wrong API key (HTTP 401)."""


@dataclass(frozen=True)
class Principal:
    """Who a verified key belongs to."""

    user_id: str
    admin: bool = False


def record_key(user_id: str) -> str:
    return f"users/{validate_id(user_id)}/apikey.json"


def _scrypt(key: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    maxmem = 2 * 128 * r * (n + p) + 2**20  # scrypt needs ~128·r·(n+p) bytes; hashlib's default cap is 32 MiB
    return hashlib.scrypt(key.encode(), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=DKLEN)


def hash_record(key: str, admin: bool, params: dict[str, int] | None = None) -> dict[str, object]:
    """The stored form of `key`: algorithm, parameters, salt and hash (hex), admin flag, creation time."""
    params = dict(params or SCRYPT_PARAMS)
    salt = secrets.token_bytes(16)
    digest = _scrypt(key, salt, params["n"], params["r"], params["p"])
    return {
        "algorithm": "scrypt",
        **params,
        "salt": salt.hex(),
        "hash": digest.hex(),
        "admin": bool(admin),
        "created": time.time(),
    }


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
    the old one, which stops working (within other processes' cache TTL). `admin=None` means False
    for a new user and "keep the current flag" on rotation.
    """
    key_name = record_key(user_id)  # validates before anything touches the store
    current_admin = False
    if rotate and admin is None and store.exists(key_name):
        current_admin = bool(json.loads(store.get_bytes(key_name)).get("admin", False))
    key = f"{KEY_PREFIX}.{user_id}.{secrets.token_urlsafe(32)}"
    record = hash_record(key, current_admin if admin is None else admin)
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
    """Verify API keys against the store, caching verified keys for `cache_ttl_s` seconds."""

    def __init__(
        self, store: Store, cache_ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.cache_ttl_s = cache_ttl_s
        self.clock = clock
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        self._lock = threading.Lock()
        # Unknown users still pay for one hash (against this dummy), so timing does not tell them
        # apart from wrong keys (as long as their record uses the current SCRYPT_PARAMS).
        self._dummy = hash_record(secrets.token_urlsafe(32), admin=False)

    def authenticate(self, key: str | None) -> Principal:
        """The key's Principal, or AuthError (same message whatever was wrong)."""
        user_id = _parse(key)
        if user_id is None or not isinstance(key, str):
            raise AuthError(AUTH_FAILED)
        fingerprint = hashlib.sha256(key.encode()).digest()
        with self._lock:
            cached = self._cache.get(fingerprint)
        if cached is not None and cached[1] > self.clock():
            return cached[0]
        principal = self._verify(user_id, key)
        if self.cache_ttl_s > 0:
            now = self.clock()
            with self._lock:
                if len(self._cache) >= MAX_CACHE_ENTRIES:
                    self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
                    if len(self._cache) >= MAX_CACHE_ENTRIES:
                        self._cache.clear()
                self._cache[fingerprint] = (principal, now + self.cache_ttl_s)
        return principal

    def _verify(self, user_id: str, key: str) -> Principal:
        try:
            record = json.loads(self.store.get_bytes(record_key(user_id)))
            stored = bytes.fromhex(record["hash"])
            params = (bytes.fromhex(record["salt"]), int(record["n"]), int(record["r"]), int(record["p"]))
            if record.get("algorithm") != "scrypt":
                raise ValueError(f"unsupported algorithm {record.get('algorithm')!r}")
        except (KeyNotFound, ValueError, KeyError, TypeError):  # unknown user or unreadable record
            record, dummy = None, self._dummy
            stored = bytes.fromhex(str(dummy["hash"]))
            params = (bytes.fromhex(str(dummy["salt"])), int(dummy["n"]), int(dummy["r"]), int(dummy["p"]))
        try:
            ok = hmac.compare_digest(_scrypt(key, *params), stored)
        except ValueError:  # parameters scrypt refuses (a damaged record): fail closed
            ok = False
        if record is None or not ok:
            raise AuthError(AUTH_FAILED)
        return Principal(user_id, bool(record.get("admin", False)))

    def revoke(self, user_id: str) -> None:
        """Delete the user's key record and forget it in this instance's cache. Other processes
        that verified the key stop accepting it when their cache entry expires (≤ cache_ttl_s)."""
        self.store.delete(record_key(user_id))
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if v[0].user_id != user_id}

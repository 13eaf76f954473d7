"""API keys on both backends: round trip, every kind of bad key, hashed storage, rotation, revocation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pstyle.serving import api_keys as auth
from pstyle.serving.api_keys import AUTH_FAILED, ApiKeys, AuthError, Principal, create_user
from pstyle.store import LocalStore, Store
from tests.test_store import untouched

DEFAULT_PARAMS = dict(auth.SCRYPT_PARAMS)
FAST_PARAMS = {"n": 2**10, "r": 8, "p": 1}  # an eighth of the default cost: the tests hash a lot


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    """For tests of logic that the backend does not affect."""
    return LocalStore(tmp_path / "store")


@pytest.fixture(autouse=True)
def _fast_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "SCRYPT_PARAMS", FAST_PARAMS)


def test_default_cost_is_deliberately_slow() -> None:
    assert DEFAULT_PARAMS["n"] >= 2**13 and DEFAULT_PARAMS["r"] >= 8


def test_key_round_trip_and_stored_record(store: Store) -> None:
    key = create_user(store, "alice")
    admin_key = create_user(store, "root", admin=True)
    prefix, user, secret = key.split(".")
    assert (prefix, user) == ("psk", "alice") and len(secret) >= 43
    keys = ApiKeys(store)
    assert keys.authenticate(key) == Principal("alice", admin=False)
    assert keys.authenticate(admin_key) == Principal("root", admin=True)

    raw = store.get_bytes("users/alice/apikey.json")
    assert secret.encode() not in raw and key.encode() not in raw  # only the salted hash is kept
    record = json.loads(raw)
    assert record["algorithm"] == "scrypt" and record["admin"] is False
    assert {k: record[k] for k in ("n", "r", "p")} == FAST_PARAMS
    assert len(bytes.fromhex(record["salt"])) == 16 and len(bytes.fromhex(record["hash"])) == 32


def test_records_keep_their_own_parameters(local: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    old = create_user(local, "alice")
    monkeypatch.setattr(auth, "SCRYPT_PARAMS", {"n": 2**11, "r": 8, "p": 1})  # cost raised later
    new = create_user(local, "bob")
    keys = ApiKeys(local, cache_ttl_s=0)
    assert keys.authenticate(old).user_id == "alice" and keys.authenticate(new).user_id == "bob"
    assert json.loads(local.get_bytes("users/bob/apikey.json"))["n"] == 2**11


BAD_KEYS = [
    None,
    "",
    "psk",
    "psk.alice",
    "psk.alice.",
    "xyz.alice.secret",
    "psk.alice.secret.extra",
    "psk.../x.secret",
    "psk.bob.secret",  # unknown user
    "Bearer psk.alice.secret",
    "psk.alice." + "x" * 300,
    b"psk.alice.secret",
]


def test_bad_keys_are_refused_with_one_message(store: Store) -> None:
    key = create_user(store, "alice")
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    keys = ApiKeys(store)
    for bad in [*BAD_KEYS, wrong, key.upper(), key + " "]:
        with pytest.raises(AuthError) as err:
            keys.authenticate(bad)  # type: ignore[arg-type]
        assert str(err.value) == AUTH_FAILED, bad
    assert keys.authenticate(key).user_id == "alice"


def test_damaged_records_fail_closed(local: LocalStore) -> None:
    key = create_user(local, "alice")
    record = json.loads(local.get_bytes("users/alice/apikey.json"))
    for damaged in [
        b"not json",
        json.dumps({**record, "n": 3}).encode(),
        json.dumps({"admin": True}).encode(),
    ]:
        local.put_bytes("users/alice/apikey.json", damaged)
        with pytest.raises(AuthError, match=AUTH_FAILED):
            ApiKeys(local).authenticate(key)


def test_wrong_key_is_never_cached_and_right_key_is(
    local: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = create_user(local, "alice")
    keys = ApiKeys(local, cache_ttl_s=60)
    hashes = []
    monkeypatch.setattr(auth, "_scrypt", lambda *a, _real=auth._scrypt: hashes.append(1) or _real(*a))
    for _ in range(2):
        with pytest.raises(AuthError):
            keys.authenticate(key + "x")
    assert len(hashes) == 2
    for _ in range(3):
        assert keys.authenticate(key).user_id == "alice"
    assert len(hashes) == 3  # the slow hash ran once for the right key, then the cache answered
    with pytest.raises(AuthError):
        keys.authenticate(key + "x")  # still not valid: verified (and failing) every time
    assert len(hashes) == 4


def test_revoke_and_rotate(store: Store) -> None:
    key = create_user(store, "alice", admin=True)
    cached = ApiKeys(store, cache_ttl_s=60)
    uncached = ApiKeys(store, cache_ttl_s=0)
    assert cached.authenticate(key).admin and uncached.authenticate(key).admin

    with pytest.raises(ValueError, match="already has an API key"):
        create_user(store, "alice")
    assert uncached.authenticate(key).user_id == "alice"  # a refused create changes nothing

    new = create_user(store, "alice", rotate=True)
    assert uncached.authenticate(new) == Principal("alice", admin=True)  # rotation keeps the admin flag
    with pytest.raises(AuthError):
        uncached.authenticate(key)  # the old key stopped working
    assert cached.authenticate(key).user_id == "alice"  # ... except in a cache, until its TTL runs out

    ApiKeys(store).revoke("alice")
    with pytest.raises(AuthError):
        uncached.authenticate(new)
    cached.revoke("alice")  # evicts this instance's cache at once
    with pytest.raises(AuthError):
        cached.authenticate(key)


def test_cache_expires_after_ttl(local: LocalStore) -> None:
    now = [1000.0]
    key = create_user(local, "alice")
    keys = ApiKeys(local, cache_ttl_s=60, clock=lambda: now[0])
    keys.authenticate(key)
    ApiKeys(local).revoke("alice")  # another process revokes
    now[0] += 59
    assert keys.authenticate(key).user_id == "alice"  # documented: cached until the TTL runs out
    now[0] += 2
    with pytest.raises(AuthError):
        keys.authenticate(key)


def test_hostile_user_ids_never_reach_storage(store: Store) -> None:
    probe = untouched(store)
    for user in ["../bob", "a/b", ".hidden", "bob\n", "", "x" * 65, "café", "a.b"]:
        with pytest.raises(ValueError, match="invalid user id"):
            create_user(store, user)
        with pytest.raises(ValueError, match="invalid user id"):
            ApiKeys(store).revoke(user)
        with pytest.raises(AuthError):
            ApiKeys(store).authenticate(f"psk.{user}.secret")
    assert probe()

"""API keys on both backends: round trip, every kind of bad key, keyed-digest storage, immediate
rotation and revocation across instances, old scrypt records refused."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path

import pytest

from pstyle.serving.api_keys import (
    API_KEY_SECRET,
    AUTH_FAILED,
    ApiKeys,
    AuthError,
    Principal,
    create_user,
)
from pstyle.serving.signed_ids import load_secret
from pstyle.store import LocalStore, Store
from tests.test_store import untouched


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    """For tests of logic that the backend does not affect."""
    return LocalStore(tmp_path / "store")


def refused(keys: ApiKeys, key: object) -> bool:
    """Whether `keys` answers `key` with the one 401 message."""
    with pytest.raises(AuthError) as err:
        keys.authenticate(key)  # type: ignore[arg-type]
    return str(err.value) == AUTH_FAILED


def test_key_round_trip_and_stored_record(store: Store) -> None:
    key = create_user(store, "alice")
    admin_key = create_user(store, "root", admin=True)
    prefix, user, secret = key.split(".")
    assert (prefix, user) == ("psk", "alice") and len(secret) >= 43  # 32 random bytes
    keys = ApiKeys(store)
    assert keys.authenticate(key) == Principal("alice", admin=False)
    assert keys.authenticate(admin_key) == Principal("root", admin=True)

    raw = store.get_bytes("users/alice/apikey.json")
    assert secret.encode() not in raw and key.encode() not in raw  # only the digest is kept
    record = json.loads(raw)
    assert record["algorithm"] == "hmac-sha256" and record["admin"] is False
    server_secret = store.get_bytes(API_KEY_SECRET)
    assert record["digest"] == hmac.new(server_secret, key.encode(), hashlib.sha256).hexdigest()
    assert record["digest"] != hashlib.sha256(key.encode()).hexdigest()  # keyed, not a bare hash
    assert server_secret != load_secret(store)  # never the image-id signing secret


BAD_KEYS = [
    None,
    "",
    "psk",
    "psk.alice",
    "psk.alice.",
    "xyz.alice.secret",
    "psk.alice.secret.extra",
    "psk.../x.secret",
    "psk.nobody.secret",  # unknown user
    "Bearer psk.alice.secret",
    "psk.alice." + "x" * 300,
    b"psk.alice.secret",
    42,
]


def test_bad_keys_are_refused_with_one_message(store: Store) -> None:
    key = create_user(store, "alice")
    bobs = create_user(store, "bob")
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    alice_secret_as_bob = "psk.bob." + key.split(".")[2]
    bob_secret_as_alice = "psk.alice." + bobs.split(".")[2]
    keys = ApiKeys(store)
    for bad in [*BAD_KEYS, wrong, key.upper(), key + " ", alice_secret_as_bob, bob_secret_as_alice]:
        assert refused(keys, bad), bad
    assert keys.authenticate(key).user_id == "alice" and keys.authenticate(bobs).user_id == "bob"


def test_damaged_records_fail_closed(local: LocalStore) -> None:
    key = create_user(local, "alice")
    record = json.loads(local.get_bytes("users/alice/apikey.json"))
    for damaged in [
        b"not json",
        b"[1, 2]",
        json.dumps({**record, "algorithm": "md5"}).encode(),
        json.dumps({**record, "digest": 7}).encode(),
        json.dumps({**record, "digest": "\u00e9" + record["digest"][1:]}).encode(),
        json.dumps({"admin": True}).encode(),
    ]:
        local.put_bytes("users/alice/apikey.json", damaged)
        assert refused(ApiKeys(local), key), damaged


def test_old_scrypt_records_are_refused_and_logged(
    local: LocalStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Choice: no scrypt check survives (it would bring back the per-request cost); operators see
    which user must be rotated, the client sees the usual 401, and rotating fixes it."""
    key = create_user(local, "alice", admin=True)
    scrypt_record = {"algorithm": "scrypt", "n": 1024, "r": 8, "p": 1, "salt": "00" * 16,
                     "hash": "11" * 32, "admin": True}  # fmt: skip
    local.put_bytes("users/alice/apikey.json", json.dumps(scrypt_record).encode())
    keys = ApiKeys(local)
    with caplog.at_level(logging.WARNING, logger="pstyle.serving.api_keys"):
        assert refused(keys, key)
    assert "pstyle users create alice --rotate" in caplog.text
    new = create_user(local, "alice", rotate=True)
    assert keys.authenticate(new) == Principal("alice", admin=True)  # rotation keeps the admin flag


def test_rotate_and_revoke_are_immediate_everywhere(store: Store) -> None:
    key = create_user(store, "alice", admin=True)
    server, other_process = ApiKeys(store), ApiKeys(store)
    assert server.authenticate(key).admin and other_process.authenticate(key).admin

    with pytest.raises(ValueError, match="already has an API key"):
        create_user(store, "alice")
    assert server.authenticate(key).user_id == "alice"  # a refused create changes nothing

    new = create_user(store, "alice", rotate=True)
    assert refused(server, key) and refused(other_process, key)  # the old key stopped at once
    assert server.authenticate(new) == Principal("alice", admin=True)

    other_process.revoke("alice")
    assert refused(server, new) and refused(other_process, new)


def test_hostile_user_ids_never_reach_storage(store: Store) -> None:
    probe = untouched(store)
    for user in ["../bob", "a/b", ".hidden", "bob\n", "", "x" * 65, "café", "a.b"]:
        with pytest.raises(ValueError, match="invalid user id"):
            create_user(store, user)
        with pytest.raises(ValueError, match="invalid user id"):
            ApiKeys(store).revoke(user)
        assert refused(ApiKeys(store), f"psk.{user}.secret")
    assert probe()

"""The Store contract, run against both backends (a folder and a real S3 server), plus S3 specifics."""

from __future__ import annotations

import http.client
import pickle
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from pyarrow import fs as pafs

from pstyle.store import KeyExists, KeyNotFound, Store, StoreError, open_store
from pstyle.store.s3 import S3Store
from tests.conftest import make_bucket


def untouched(store: Store) -> Callable[[], bool]:
    """A probe that answers whether any request reached the storage since it was made."""
    if isinstance(store, S3Store):
        sent: list[str] = []
        store.client.meta.events.register("before-send.s3", lambda **kw: sent.append(kw["request"].url))
        return lambda: not sent
    root = Path(store.root)
    return lambda: not root.exists() or not any(root.rglob("*"))


# --- the contract, on both backends ---------------------------------------------------------------


def test_put_get_round_trip_and_overwrite(store: Store) -> None:
    payload = bytes(range(256)) * 4
    store.put_bytes("a/b/blob", payload)
    assert store.get_bytes("a/b/blob") == payload
    store.put_bytes("a/b/blob", b"")
    assert store.get_bytes("a/b/blob") == b""


def test_if_absent_creates_once_and_never_overwrites(store: Store) -> None:
    assert store.conditional_writes
    store.put_bytes("claims/x", b"first", if_absent=True)
    with pytest.raises(KeyExists):
        store.put_bytes("claims/x", b"second", if_absent=True)
    assert store.get_bytes("claims/x") == b"first"


def test_missing_key(store: Store) -> None:
    with pytest.raises(KeyNotFound):
        store.get_bytes("nope/x")
    with pytest.raises(FileNotFoundError):  # KeyNotFound is a FileNotFoundError
        store.modified("nope/x")
    assert not store.exists("nope/x")
    store.put_bytes("nope/x", b"1")
    assert store.exists("nope/x")
    assert not store.exists("nope")  # a prefix is not a key


def test_list_is_raw_prefix_match_in_key_order(store: Store) -> None:
    keys = ["a/bc/x", "a0", "b/1", "a/b/y/z", "a-z/1", "a/c", "a/b/x", "ab"]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert (
        list(store.list())
        == sorted(keys)
        == ["a-z/1", "a/b/x", "a/b/y/z", "a/bc/x", "a/c", "a0", "ab", "b/1"]
    )
    assert list(store.list("a/b")) == ["a/b/x", "a/b/y/z", "a/bc/x"]  # a partial segment matches
    assert list(store.list("a/b/")) == ["a/b/x", "a/b/y/z"]
    assert list(store.list("a")) == ["a-z/1", "a/b/x", "a/b/y/z", "a/bc/x", "a/c", "a0", "ab"]
    assert list(store.list("a/")) == ["a/b/x", "a/b/y/z", "a/bc/x", "a/c"]
    assert list(store.list("b/1")) == ["b/1"]
    assert list(store.list("zz")) == list(store.list("a/b/x/")) == []


def test_delete_is_idempotent(store: Store) -> None:
    store.put_bytes("d/x", b"1")
    store.delete("d/x")
    assert not store.exists("d/x")
    store.delete("d/x")
    store.delete("never/was")
    assert list(store.list("d/")) == []


def test_modified_is_recent(store: Store) -> None:
    store.put_bytes("m/x", b"1")
    assert abs(store.modified("m/x") - time.time()) < 60


HOSTILE_KEYS = [
    "",
    "../x",
    "a/../b",
    "/abs",
    "a//b",
    "a/b/",
    ".hidden",
    "a/.hidden",
    "a\nb",
    "a\x00b",
    "a\x1bb",
    "a b",
    "a\\b",
    "caf\u00e9",
    "x" * 129,
]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_hostile_keys_never_reach_storage(store: Store, key: str) -> None:
    probe = untouched(store)
    calls = [
        lambda: store.put_bytes(key, b"x"),
        lambda: store.put_bytes(key, b"x", if_absent=True),
        lambda: store.get_bytes(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.modified(key),
        lambda: store.arrow_storage(key),
    ]
    if key not in ("", "a/b/"):  # valid as prefixes
        calls.append(lambda: list(store.list(key)))
    for call in calls:
        with pytest.raises(ValueError, match="invalid store key"):
            call()
    assert probe()


def test_arrow_storage_is_the_same_store(store: Store) -> None:
    """Ray Tune/Train write through pyarrow; the store must see those files, and vice versa."""
    path, filesystem = store.arrow_storage("tune/run1")
    filesystem = filesystem or pafs.LocalFileSystem()
    filesystem.create_dir(f"{path}/trial_0")  # pyarrow's S3 writes 'dir/' marker objects here
    with filesystem.open_output_stream(f"{path}/trial_0/result.json") as f:
        f.write(b'{"loss": 1}')
    with filesystem.open_output_stream(f"{path}/.validate_storage_marker") as f:
        f.write(b"")
    assert store.get_bytes("tune/run1/trial_0/result.json") == b'{"loss": 1}'
    store.put_bytes("tune/run1/params.json", b"{}")
    with filesystem.open_input_stream(f"{path}/params.json") as f:
        assert f.read() == b"{}"
    # Hidden files and directory markers are not keys.
    assert list(store.list("tune/")) == ["tune/run1/params.json", "tune/run1/trial_0/result.json"]


def test_concurrent_if_absent_writers_have_one_winner(store: Store) -> None:
    writers = 8

    def race(key: str) -> list[int]:
        barrier = threading.Barrier(writers)

        def write(i: int) -> int | None:
            barrier.wait()
            try:
                store.put_bytes(key, f"writer {i}".encode(), if_absent=True)
            except KeyExists:
                return None
            return i

        with ThreadPoolExecutor(writers) as pool:
            return [i for i in pool.map(write, range(writers)) if i is not None]

    for round_ in range(3):
        winners = race(f"race/{round_}")
        assert len(winners) == 1
        assert store.get_bytes(f"race/{round_}") == f"writer {winners[0]}".encode()


def test_store_travels_by_uri_and_pickle(store: Store) -> None:
    """Ray ships stores to workers by pickling; the CLI passes them around as URIs."""
    store.put_bytes("shared/x", b"1")
    for copy in (pickle.loads(pickle.dumps(store)), open_store(store.uri)):
        assert type(copy) is type(store) and copy.uri == store.uri
        assert copy.get_bytes("shared/x") == b"1"


def test_importing_the_store_stays_light() -> None:
    code = (
        "import sys, pstyle.store; print(sorted({'boto3', 'botocore', 'pyarrow', 'ray'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- S3 specifics ---------------------------------------------------------------------------------


def test_open_store_parses_s3_uris(s3_env: str) -> None:
    store = open_store("s3://my-bucket/some/prefix/")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.uri) == (
        "my-bucket",
        "some/prefix",
        "s3://my-bucket/some/prefix",
    )
    bare = open_store("s3://my-bucket")
    assert (bare.prefix, bare.uri) == ("", "s3://my-bucket")
    for bad in ("s3://", "s3:///prefix", "s3://b//x", "s3://b/../x", "s3://b/.x"):
        with pytest.raises(ValueError):
            open_store(bad)


def test_bucket_root_store_lists_whole_bucket(s3_env: str) -> None:
    store = open_store(f"s3://{make_bucket(s3_env)}")
    store.put_bytes("top", b"1")
    assert list(store.list()) == ["top"]
    path, _ = store.arrow_storage("tune")
    assert path == f"{store.bucket}/tune"


def test_arrow_storage_ships_no_secret_and_resolves_credentials_where_it_lands(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Ray's RunConfig pickles to every worker holds no key; the receiving process resolves the
    standard chain itself, so credentials rotated since the run started still upload checkpoints."""
    secret = f"secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    store = open_store(f"s3://{make_bucket(s3_env)}/p")
    path, filesystem = store.arrow_storage("tune")
    shipped = pickle.dumps(filesystem)
    assert secret.encode() not in shipped and b"testing" not in shipped  # neither key nor key id
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "rotated-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"secret-{uuid.uuid4().hex}")
    with pickle.loads(shipped).open_output_stream(f"{path}/checkpoint.bin") as f:
        f.write(b"step 2")
    assert store.get_bytes("tune/checkpoint.bin") == b"step 2"


def test_missing_bucket_is_a_clear_error(s3_env: str) -> None:
    bucket = f"pstyle-missing-{uuid.uuid4().hex[:12]}"
    store = S3Store(bucket, "p")
    calls = [
        lambda: store.put_bytes("k", b"1"),
        lambda: store.get_bytes("k"),
        lambda: store.exists("k"),
        lambda: store.modified("k"),
        lambda: store.delete("k"),
        lambda: list(store.list()),
    ]
    for call in calls:
        with pytest.raises(StoreError, match=f"bucket {bucket} does not exist"):
            call()


class FlakyProxy(ThreadingHTTPServer):
    """Forwards S3 requests to `upstream`, answering the first ones with canned errors instead."""

    daemon_threads = True

    def __init__(self, upstream: str, failures: list[tuple[int, str]]) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = urlsplit(upstream).netloc
        self.failures = list(failures)
        self.failed: list[str] = []
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_port}"

    def next_failure(self, request: str) -> tuple[int, str] | None:
        with self.lock:
            if not self.failures:
                return None
            self.failed.append(request)
            return self.failures.pop(0)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FlakyProxy

    def handle_request(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        failure = self.server.next_failure(f"{self.command} {self.path}")
        if failure:
            status, code = failure
            error = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
            self.reply(status, [("Content-Type", "application/xml")], error)
        else:
            self.forward(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_request

    def forward(self, body: bytes) -> None:
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in {"expect", "connection"}}
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        payload = response.read()
        hop = {"transfer-encoding", "connection", "content-length"}
        self.reply(
            response.status, [(k, v) for k, v in response.getheaders() if k.lower() not in hop], payload
        )
        upstream.close()

    def reply(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if self.command != "HEAD":  # a HEAD answer's Content-Length came with the forwarded headers
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def flaky_proxy(upstream: str, failures: list[tuple[int, str]]) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(upstream, failures)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_throttling_and_5xx_are_retried(s3_env: str) -> None:
    bucket = make_bucket(s3_env)
    with flaky_proxy(s3_env, [(503, "SlowDown"), (503, "SlowDown")]) as proxy:
        store = S3Store(bucket, "p", endpoint_url=proxy.url)
        store.put_bytes("k", b"survived")
        assert store.get_bytes("k") == b"survived"
    assert len(proxy.failed) == 2 and all(r.startswith("PUT ") for r in proxy.failed)


def test_conditional_write_conflict_is_retried(s3_env: str) -> None:
    """S3 answers 409 ConditionalRequestConflict while another conditional write is in flight."""
    bucket = make_bucket(s3_env)
    with flaky_proxy(s3_env, [(409, "ConditionalRequestConflict")]) as proxy:
        store = S3Store(bucket, endpoint_url=proxy.url)
        store.put_bytes("claim", b"mine", if_absent=True)
        with pytest.raises(KeyExists):
            store.put_bytes("claim", b"theirs", if_absent=True)
        assert store.get_bytes("claim") == b"mine"
    assert len(proxy.failed) == 1


def test_failure_after_retries_names_key_and_code(s3_env: str) -> None:
    bucket = make_bucket(s3_env)
    with flaky_proxy(s3_env, [(503, "SlowDown")] * 2) as proxy:
        client = boto3.client(
            "s3", endpoint_url=proxy.url, config=Config(retries={"mode": "standard", "total_max_attempts": 2})
        )
        store = S3Store(bucket, "p", client=client)
        with pytest.raises(StoreError, match=r"s3://.*/p/weights/k.*SlowDown"):
            store.get_bytes("weights/k")
    assert len(proxy.failed) == 2

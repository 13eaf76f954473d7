"""A store in an S3 bucket (AWS or any S3-compatible server: MinIO, Ceph, moto), for clusters.

Endpoint, region and credentials come from boto3's standard configuration chain
(`AWS_ENDPOINT_URL`/`AWS_ENDPOINT_URL_S3`, `AWS_PROFILE`, env keys, instance roles), so the same
`s3://bucket/prefix` URI works on a laptop against MinIO and on EC2 against S3.

Conditional writes: `put_bytes(..., if_absent=True)` sends `If-None-Match: *`, which S3 evaluates
atomically (412 PreconditionFailed when the key exists; since August 2024). moto 5.2.5 honours it
too (the tests race writers against a real moto_server), so `conditional_writes` is True with no
racy head-then-put fallback. A server that ignores the header would silently overwrite, so use
this backend only with servers that implement conditional PUTs. A 409 ConditionalRequestConflict
(another conditional write in flight) is retried here, as S3 asks.

Throttling (503 SlowDown) and 5xx answers are retried by botocore's "standard" mode with jittered
exponential backoff; what still fails raises StoreError naming the key and the error code.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pstyle.store.base import KeyExists, KeyNotFound, Store, StoreError, check_key, check_prefix

MAX_ATTEMPTS = 8
CLIENT_CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
    connect_timeout=10,
    read_timeout=60,
)
INTERACTIVE_CONFIG = Config(  # a request waits: three quick tries, then StoreError (a 503)
    retries={"mode": "standard", "total_max_attempts": 3},
    connect_timeout=2,
    read_timeout=15,
)
MISSING = {"NoSuchKey", "404", "NotFound"}


class _Conflict(StoreError):
    """409 ConditionalRequestConflict: a concurrent conditional write was in flight; S3 says retry."""


class S3Store(Store):
    """Objects are S3 objects under `s3://bucket/prefix/`; S3 PUTs are atomic, so writes are too."""

    conditional_writes = True

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        client: BaseClient | None = None,
        interactive: bool = False,
    ) -> None:
        """`client` replaces the one built here (custom retries, event hooks); `arrow_storage`
        takes its credentials from the standard chain. `interactive` gives up sooner
        (`INTERACTIVE_CONFIG`): for stores that requests wait on."""
        if not bucket:
            raise ValueError("S3Store needs a bucket name")
        prefix = prefix.rstrip("/")
        self.bucket = bucket
        self.prefix = check_key(prefix) if prefix else ""
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url
        self.interactive = interactive
        config = INTERACTIVE_CONFIG if interactive else CLIENT_CONFIG
        self.client = client or boto3.Session().client("s3", endpoint_url=endpoint_url, config=config)
        self._bucket_seen = False

    @classmethod
    def from_uri(cls, uri: str, interactive: bool = False) -> S3Store:
        """`s3://bucket` or `s3://bucket/some/prefix`."""
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        return cls(bucket, prefix, interactive=interactive)

    def __reduce__(self) -> tuple:
        """Boto3 clients do not pickle: a copy sent to a Ray worker rebuilds its own client there
        (from the worker's configuration chain, unless an explicit endpoint was given)."""
        return type(self), (self.bucket, self.prefix, self.endpoint_url, None, self.interactive)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{check_key(key)}" if self.prefix else check_key(key)

    def put_bytes(self, key: str, data: bytes, if_absent: bool = False) -> None:
        condition = {"IfNoneMatch": "*"} if if_absent else {}
        for attempt in range(MAX_ATTEMPTS):
            try:
                with self._errors(key):
                    self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
                return
            except _Conflict:
                if attempt == MAX_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0, 0.05 * 2**attempt))

    def get_bytes(self, key: str) -> bytes:
        with self._errors(key):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except KeyNotFound:
            return False
        return True

    def modified(self, key: str) -> float:
        return self._head(key)["LastModified"].timestamp()

    def list(self, prefix: str = "") -> Iterator[str]:
        full = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full + check_prefix(prefix)
        )
        with self._errors(prefix):
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(full) :]
                    if _listable(key):
                        yield key

    def delete(self, key: str) -> None:
        with self._errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def arrow_storage(self, prefix: str) -> tuple[str, object]:
        """pyarrow's S3 filesystem on the same endpoint and region, so Ray Tune/Train checkpoints land
        in this bucket under this store's prefix.

        No credentials are passed: pyarrow resolves the standard AWS chain itself (environment,
        config files, web identity, instance metadata) in every process that unpickles the
        filesystem, and refreshes short-lived ones. So nothing secret travels in Ray's RunConfig,
        and a run that outlives its first credentials (IRSA, about an hour) keeps uploading."""
        path = "/".join(part for part in (self.bucket, self.prefix, check_key(prefix)) if part)
        return path, self.arrow_filesystem()

    def arrow_filesystem(self) -> object:
        """pyarrow's S3 filesystem on this store's endpoint and region, with no credentials in it."""
        from pyarrow.fs import S3FileSystem

        endpoint = urlsplit(self.client.meta.endpoint_url)
        return S3FileSystem(
            region=self.client.meta.region_name, endpoint_override=endpoint.netloc, scheme=endpoint.scheme
        )

    def _head(self, key: str) -> dict:
        with self._errors(key):
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Translate boto errors into the Store vocabulary, naming the key and the error code."""
        try:
            yield
        except ClientError as exc:
            raise self._client_error(key, exc) from exc
        except BotoCoreError as exc:
            raise StoreError(f"S3 request for {self.uri}/{key} failed: {exc}") from exc

    def _client_error(self, key: str, exc: ClientError) -> Exception:
        code = _code(exc)
        if code == "NoSuchBucket":
            return self._no_bucket()
        if code in MISSING:
            # A HEAD answers a bare 404 for a missing bucket too: tell the two apart once.
            return KeyNotFound(key) if self._bucket_exists() else self._no_bucket()
        if code == "PreconditionFailed":
            return KeyExists(key)
        if code == "ConditionalRequestConflict":
            return _Conflict(f"S3 conditional write of {self.uri}/{key} conflicted: {code}")
        return StoreError(f"S3 request for {self.uri}/{key} failed: {code} ({exc})")

    def _bucket_exists(self) -> bool:
        if not self._bucket_seen:
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _code(exc) in MISSING | {"NoSuchBucket"}:
                    return False
                raise StoreError(f"S3 bucket {self.bucket} is not accessible: {_code(exc)}") from exc
            except BotoCoreError as exc:
                raise StoreError(f"S3 bucket {self.bucket} is not reachable: {exc}") from exc
            self._bucket_seen = True
        return True

    def _no_bucket(self) -> StoreError:
        return StoreError(f"bucket {self.bucket} does not exist (store {self.uri})")


def _listable(key: str) -> bool:
    """Skip what LocalStore skips (hidden files and folders) and pyarrow's 'dir/' marker objects."""
    return bool(key) and not key.endswith("/") and not any(part.startswith(".") for part in key.split("/"))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "unknown"))

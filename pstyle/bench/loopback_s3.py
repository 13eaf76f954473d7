"""A real S3-compatible server on loopback (moto_server), for tests, benchmarks and the S3 demo."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pstyle.distributed.runtime import free_port


@contextmanager
def local_s3_server(timeout_s: float = 30.0) -> Iterator[str]:
    """Start `moto_server` (from moto[server], next to this Python) on 127.0.0.1; yield its URL."""
    executable = Path(sys.executable).with_name("moto_server")
    if not executable.is_file():
        raise FileNotFoundError(f"{executable} not found: install moto[server] to run a local S3 server")
    port = free_port()
    proc = subprocess.Popen(
        [str(executable), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


LOOPBACK_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """This process's environment with `values` set (seen by child processes started inside, Ray's
    included), restored after."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def loopback_s3_env(bucket: str) -> Iterator[str]:
    """A moto_server with `bucket` created, and this process's AWS environment pointed at it (dummy
    credentials) so boto3, pyarrow and child processes all reach it; the environment is restored after."""
    import boto3

    with local_s3_server() as url, environment({**LOOPBACK_ENV, "AWS_ENDPOINT_URL": url}):
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield url

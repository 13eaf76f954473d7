"""Read bytes from a local path or an s3:// URI (user-supplied weights live in either)."""

from __future__ import annotations

from pathlib import Path


def read_bytes(uri: str | Path) -> bytes:
    """Local paths read directly; s3://bucket/key goes through boto3's standard credential chain
    (and AWS_ENDPOINT_URL for S3-compatible servers)."""
    text = str(uri)
    if text.startswith("s3://"):
        import boto3
        from botocore.exceptions import ClientError

        bucket, _, key = text.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise ValueError(f"malformed S3 URI {text!r}: expected s3://bucket/key")
        try:
            return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:  # NoSuchKey, NoSuchBucket, AccessDenied...
            raise FileNotFoundError(f"cannot read {text}: {exc.response['Error']['Code']}") from exc
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return path.read_bytes()

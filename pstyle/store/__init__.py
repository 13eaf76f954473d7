"""Artifact stores: a local folder by default, S3 (or any S3-compatible endpoint) on clusters."""

from __future__ import annotations

import os
from pathlib import Path

from pstyle.store.base import KeyExists, KeyNotFound, Store, StoreError, check_key
from pstyle.store.local import LocalStore

DEFAULT_ROOT = "~/.pstyle"

__all__ = ["KeyExists", "KeyNotFound", "LocalStore", "Store", "StoreError", "check_key", "open_store"]


def open_store(uri: str | Path | None = None, interactive: bool = False) -> Store:
    """The URI picks the backend: `s3://bucket/prefix` → S3Store, anything else is a folder.

    No URI means `$PSTYLE_STORE`, else `~/.pstyle`: the embedded default needs no set-up.
    `interactive`: a request is waiting on this store, so an unreachable S3 endpoint must be a quick
    error (the server answers 503) rather than a minute of retries.
    """
    text = str(uri) if uri else os.environ.get("PSTYLE_STORE") or DEFAULT_ROOT
    if text.startswith("s3://"):
        from pstyle.store.s3 import S3Store

        return S3Store.from_uri(text, interactive)
    if "://" in text:
        raise ValueError(f"unsupported store URI {text!r}: use a folder path or s3://bucket/prefix")
    return LocalStore(text)

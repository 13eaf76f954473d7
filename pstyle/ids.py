"""Validation of user ids and artifact names before they touch a path, a key or a module name."""

from __future__ import annotations

import re

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def validate_id(value: str, kind: str = "user id") -> str:
    """Return `value` if it is 1-64 of [A-Za-z0-9_-] starting alphanumeric, else raise ValueError.

    A strict allow-list (no '.', '/', spaces or control characters) rules out path traversal and
    key injection by construction instead of by spotting bad patterns.
    """
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"invalid {kind} {value!r}: use 1-64 letters, digits, '_' or '-', starting alphanumeric"
        )
    return value

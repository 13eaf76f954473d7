"""Request bodies (multipart or JSON with base64 files) parsed in memory, in a worker thread.

Starlette's form parser spools every file over 1 MiB to a temporary file and hops to a thread for
each chunk it writes, on the ingress's event loop. Uploads here are capped at a few MiB and read
whole anyway, so one pass of python-multipart's parser (the one Starlette uses) over the bytes in
memory costs far less and can run off the loop, beside the image decode.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

FILE_FIELDS = ("image", "mask")  # single files; `style` may repeat and becomes a list of (name, bytes)


class FormError(ValueError):
    """A body the client must fix: `status` is 400 (malformed) or 415 (neither multipart nor JSON)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def parse_form(body: bytes, content_type: str, max_parts: int) -> dict[str, Any]:
    """Fields by name: `image`/`mask` as bytes, `style` as a list of (file name, bytes), the rest as
    strings. A file field is a file whether or not the client gave it a file name."""
    if content_type.startswith("multipart/form-data"):
        return _fields(_multipart_parts(body, content_type, max_parts))
    if content_type.startswith("application/json"):
        return _json_fields(body)
    raise FormError("send multipart/form-data (field 'image') or application/json (base64 'image')", 415)


def _fields(parts: list[tuple[str, str | None, bytes]]) -> dict[str, Any]:
    fields: dict[str, Any] = {"style": []}
    for name, filename, data in parts:
        if name == "style":
            fields["style"].append((filename or f"style {len(fields['style']) + 1}", data))
        elif name in FILE_FIELDS:
            fields[name] = data
        else:
            try:
                fields[name] = data.decode("utf-8")
            except UnicodeDecodeError:
                raise FormError(f"field {name!r} is not UTF-8 text") from None
    return fields


def _multipart_parts(body: bytes, content_type: str, max_parts: int) -> list[tuple[str, str | None, bytes]]:
    """(name, file name or None, bytes) of each part, in order."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise FormError("multipart body without a boundary in its Content-Type")
    parts: list[tuple[str, str | None, bytes]] = []
    headers: dict[bytes, bytes] = {}
    field, value, chunks = bytearray(), bytearray(), []
    ended = []

    def header_end() -> None:
        headers[bytes(field).lower()] = bytes(value)
        field.clear()
        value.clear()

    def part_end() -> None:
        _, disposition = parse_options_header(headers.pop(b"content-disposition", b""))
        if b"name" not in disposition:
            raise FormError("a multipart part has no name in its Content-Disposition")
        if len(parts) == max_parts:
            raise FormError(f"too many multipart parts: at most {max_parts}")
        filename = disposition.get(b"filename")
        name = disposition[b"name"].decode("utf-8", "replace")
        parts.append((name, filename.decode("utf-8", "replace") if filename else None, b"".join(chunks)))
        headers.clear()
        chunks.clear()

    callbacks = {
        "on_header_field": lambda data, start, end: field.extend(data[start:end]),
        "on_header_value": lambda data, start, end: value.extend(data[start:end]),
        "on_header_end": header_end,
        "on_part_data": lambda data, start, end: chunks.append(data[start:end]),
        "on_part_end": part_end,
        "on_end": lambda: ended.append(True),
    }
    parser = MultipartParser(boundary, callbacks)
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise FormError(f"malformed multipart body: {exc}") from None
    if not ended:
        raise FormError("multipart body ends before its closing boundary")
    return parts


def _json_fields(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
        if not isinstance(document, dict):
            raise TypeError("the body must be a JSON object")
        fields = dict(document)
        for name in FILE_FIELDS:
            if fields.get(name) is not None:
                fields[name] = base64.b64decode(fields[name], validate=True)
        fields["style"] = [
            (f"style {i + 1}", base64.b64decode(data, validate=True))
            for i, data in enumerate(document.get("style") or [])
        ]
    except (ValueError, TypeError, binascii.Error) as exc:
        raise FormError(f"malformed JSON body: {exc}") from None
    return fields

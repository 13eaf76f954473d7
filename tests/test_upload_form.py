"""Upload bodies parse in memory the way a client encodes them, and malformed ones name the fault."""

from __future__ import annotations

import base64
import json

import pytest
import requests

from pstyle.serving.upload_form import FormError, parse_form


def encode(files: list[tuple[str, tuple]], data: dict[str, str]) -> tuple[bytes, str]:
    """The exact bytes and Content-Type that `requests` (the bench and test client) sends."""
    return requests.models.RequestEncodingMixin._encode_files(files, data)


def test_multipart_fields_files_and_repeated_styles() -> None:
    body, kind = encode(
        [("image", ("photo.jpg", b"\xff\xd8jpeg\r\n--not-a-boundary")), ("style", ("a.png", b"A")),
         ("style", ("b.png", b"B" * 300_000)), ("mask", ("m.png", b"M"))],
        {"strength": "0.5", "region": "mask"},
    )  # fmt: skip
    fields = parse_form(body, kind, max_parts=10)
    assert fields["image"] == b"\xff\xd8jpeg\r\n--not-a-boundary"
    assert fields["mask"] == b"M"
    assert fields["style"] == [("a.png", b"A"), ("b.png", b"B" * 300_000)]
    assert (fields["strength"], fields["region"]) == ("0.5", "mask")


def test_a_file_field_sent_without_a_file_name_is_still_a_file() -> None:
    body, kind = encode([("image", (None, b"\x89PNG bytes")), ("style", (None, b"S"))], {})
    fields = parse_form(body, kind, max_parts=4)
    assert fields["image"] == b"\x89PNG bytes"
    assert fields["style"] == [("style 1", b"S")]


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda body: body[: len(body) // 2], "ends before its closing boundary"),
        (lambda body: body.replace(b'name="image"', b'nom="image"'), "no name"),
        (lambda body: b"garbage" + body, "malformed multipart body"),
    ],
)
def test_malformed_multipart_is_a_400_naming_the_fault(mangle, message: str) -> None:
    body, kind = encode([("image", ("a.png", b"x" * 1000))], {"seed": "1"})
    with pytest.raises(FormError, match=message) as caught:
        parse_form(mangle(body), kind, max_parts=4)
    assert caught.value.status == 400


def test_too_many_parts_and_bad_text_and_no_boundary() -> None:
    body, kind = encode([("style", (f"{i}.png", b"s")) for i in range(5)], {})
    with pytest.raises(FormError, match="at most 4"):
        parse_form(body, kind, max_parts=4)
    body, kind = encode([("image", ("a.png", b"x"))], {"seed": "1"})
    with pytest.raises(FormError, match="'seed' is not UTF-8"):
        parse_form(body.replace(b"\r\n1\r\n", b"\r\n\xff\r\n"), kind, max_parts=4)
    with pytest.raises(FormError, match="boundary"):
        parse_form(body, "multipart/form-data", max_parts=4)


def test_json_with_base64_files_and_its_errors() -> None:
    doc = {"image": base64.b64encode(b"img").decode(), "style": [base64.b64encode(b"s").decode()], "seed": 3}
    fields = parse_form(json.dumps(doc).encode(), "application/json", max_parts=4)
    assert (fields["image"], fields["style"], fields["seed"]) == (b"img", [("style 1", b"s")], 3)
    for bad in (b"{not json", b"[1, 2]", json.dumps({"image": "***"}).encode()):
        with pytest.raises(FormError, match="malformed JSON body"):
            parse_form(bad, "application/json", max_parts=4)


def test_other_content_types_are_a_415() -> None:
    with pytest.raises(FormError, match="multipart/form-data") as caught:
        parse_form(b"x", "text/plain", max_parts=4)
    assert caught.value.status == 415

"""The request parser, called directly: every refusal's status, slug and message, and
every accepted shape's result. Pure (no model, no server): the routes' tests show the
same answers over HTTP; these pin the exact words a client or an operator reads."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from starlette.requests import Request

from embedbalance_worker.errors import ApiError
from embedbalance_worker.parsing import (
    EmbedRequest,
    check_headers,
    decode_json,
    is_json,
    parse_openai,
    parse_tei,
    read_body,
)


def _request(headers: dict[str, str], chunks: Sequence[bytes] = ()) -> Request:
    """A starlette request with these headers whose body arrives in ``chunks``."""
    parts = list(chunks)

    async def receive() -> dict[str, Any]:
        body = parts.pop(0) if parts else b""
        return {"type": "http.request", "body": body, "more_body": bool(parts)}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/embed",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope, receive)


def _refused(call: Any, *args: Any, **kwargs: Any) -> tuple[int, str, str]:
    with pytest.raises(ApiError) as err:
        call(*args, **kwargs)
    return err.value.status, err.value.error_type, err.value.message


# -- media type -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "ok"),
    [
        ("application/json", True),
        ("Application/JSON", True),
        ("application/json; charset=utf-8", True),
        ("application/json; charset=utf-8; x=y", True),
        ("application/vnd.api+json", True),
        ("APPLICATION/VND.API+JSON", True),
        ("text/json", False),
        ("text/plain+json", False),
        ("application/xml", False),
        ("application/jsonx", False),
        ("", False),
        ("multipart/form-data; boundary=application/json", False),
    ],
)
def test_is_json(content_type: str, ok: bool) -> None:
    """application/json or application/*+json, any case, parameters ignored; nothing else."""
    assert is_json(content_type) is ok


def test_check_headers_refuses_a_missing_or_wrong_media_type_by_name() -> None:
    """415 naming what came (or 'none')."""
    assert _refused(check_headers, _request({}), 100) == (
        415,
        "unsupported_media_type",
        "expected Content-Type application/json, got 'none'",
    )
    assert _refused(check_headers, _request({"content-type": "text/plain"}), 100) == (
        415,
        "unsupported_media_type",
        "expected Content-Type application/json, got 'text/plain'",
    )


def test_check_headers_reads_the_declared_length_against_the_limit() -> None:
    """No Content-Length: None (chunked); a number up to the limit: that number; past it:
    413 before a byte is read; not a number: 400."""
    json_ = {"content-type": "application/json"}
    assert check_headers(_request(json_), 100) is None
    assert check_headers(_request({**json_, "content-length": "100"}), 100) == 100
    assert check_headers(_request({**json_, "content-length": "0"}), 100) == 0
    assert _refused(check_headers, _request({**json_, "content-length": "101"}), 100) == (
        413,
        "body_too_large",
        "body exceeds the 100-byte limit",
    )
    for bad in ("-1", "1e3", "ten", " 5"):
        assert _refused(check_headers, _request({**json_, "content-length": bad}), 100) == (
            400,
            "invalid_header",
            "Content-Length is not a number",
        )


# -- body -----------------------------------------------------------------------------


def _read(chunks: Sequence[bytes], limit: int) -> bytes:
    return asyncio.run(read_body(_request({}, chunks), limit))


@pytest.mark.parametrize(
    "chunks",
    [[b"abc"], [b"ab", b"c"], [b"a", b"b", b"c"], [b"", b"abc"], [b"abc", b""]],
)
def test_read_body_joins_the_chunks_in_order(chunks: list[bytes]) -> None:
    """However the body is split, the bytes come back whole and in order."""
    assert _read(chunks, 10) == b"abc"


def test_read_body_of_nothing_is_empty() -> None:
    assert _read([], 10) == b""


def test_read_body_allows_exactly_the_limit_and_refuses_one_byte_more() -> None:
    """The running total, not the last chunk, is held to the limit."""
    assert _read([b"12345", b"67890"], 10) == b"1234567890"
    with pytest.raises(ApiError) as err:
        _read([b"12345", b"67890", b"1"], 10)
    assert (err.value.status, err.value.error_type, err.value.message) == (
        413,
        "body_too_large",
        "body exceeds the 10-byte limit",
    )


# -- JSON -----------------------------------------------------------------------------


def test_decode_json_names_each_kind_of_bad_body() -> None:
    """Bad UTF-8, a lone surrogate, bad JSON and a non-object each get their own slug."""
    status, slug, message = _refused(decode_json, b'{"inputs": "\xff"}')
    assert (status, slug) == (400, "invalid_utf8")
    assert message.startswith("body is not valid UTF-8: ")
    status, slug, message = _refused(decode_json, b'{"inputs": "\\ud800"}')
    assert (status, slug) == (400, "invalid_unicode")
    assert message.startswith("body has a lone surrogate: ")
    status, slug, message = _refused(decode_json, b'{"inputs": ')
    assert (status, slug) == (400, "invalid_json")
    assert message.startswith("body is not valid JSON: ")
    for not_object in (b"[]", b'"x"', b"3", b"null"):
        assert _refused(decode_json, not_object) == (
            422,
            "invalid_body",
            "body must be a JSON object",
        )
    assert decode_json(b'{"inputs": "x"}') == {"inputs": "x"}


# -- fields ---------------------------------------------------------------------------


def _tei(payload: dict[str, Any], **kw: Any) -> EmbedRequest:
    return parse_tei(payload, max_inputs=kw.pop("max_inputs", 4), normalize=True, **kw)


def _openai(payload: dict[str, Any], **kw: Any) -> EmbedRequest:
    return parse_openai(payload, max_inputs=kw.pop("max_inputs", 4), normalize=True, **kw)


@pytest.mark.parametrize(
    ("value", "items"),
    [
        ("a", ("a",)),
        (["a", "b"], ("a", "b")),
        ([1, 2, 3], ((1, 2, 3),)),
        ([0], ((0,),)),
        ([[1, 2], [3]], ((1, 2), (3,))),
        (["a", [5, 6]], ("a", (5, 6))),
    ],
)
def test_inputs_of_every_accepted_shape(value: Any, items: tuple[Any, ...]) -> None:
    """A text, texts, one input of token ids, several, or a mix — in order, both routes."""
    assert _tei({"inputs": value}).items == items
    assert _openai({"input": value}).items == items


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            None,
            (
                422,
                "invalid_input",
                "'inputs' must be a string, a list of strings, or token "
                "ids (a list of integers or a list of such lists), got NoneType",
            ),
        ),
        (
            3,
            (
                422,
                "invalid_input",
                "'inputs' must be a string, a list of strings, or token "
                "ids (a list of integers or a list of such lists), got int",
            ),
        ),
        (
            {"a": 1},
            (
                422,
                "invalid_input",
                "'inputs' must be a string, a list of strings, or "
                "token ids (a list of integers or a list of such lists), got dict",
            ),
        ),
        ([], (422, "empty_input", "'inputs' must not be an empty list")),
        ([""], (422, "empty_input", "inputs[0] is an empty string")),
        (["a", []], (422, "empty_input", "inputs[1] is an empty list of token ids")),
        (
            ["a", 3],
            (422, "invalid_input", "inputs[1] is int, expected a string or a list of token ids"),
        ),
        (
            ["a", None],
            (
                422,
                "invalid_input",
                "inputs[1] is NoneType, expected a string or a list of token ids",
            ),
        ),
        ([[1, "2"]], (422, "invalid_input", "inputs[0][1] is str: token ids must all be integers")),
        (
            [[1, 2.0]],
            (422, "invalid_input", "inputs[0][1] is float: token ids must all be integers"),
        ),
        (
            [[1, True]],
            (422, "invalid_input", "inputs[0][1] is bool: token ids must all be integers"),
        ),
        ([[3, -1]], (422, "invalid_input", "inputs[0][1] is a negative token id")),
        (
            [1, -1],
            (422, "invalid_input", "inputs[0][1] is a negative token id"),
        ),
        (["a"] * 5, (413, "too_many_inputs", "5 inputs exceed the limit of 4 per request")),
    ],
)
def test_each_bad_input_is_refused_by_name(value: Any, expected: tuple[int, str, str]) -> None:
    """Status, slug and the exact message (which names the field and the position)."""
    assert _refused(_tei, {"inputs": value}) == expected
    status, slug, message = expected
    openai = message.replace("'inputs'", "'input'").replace("inputs[", "input[")
    assert _refused(_openai, {"input": value}) == (status, slug, openai)


def test_the_input_limit_is_inclusive() -> None:
    assert len(_tei({"inputs": ["a"] * 4}).items) == 4


def test_a_missing_input_field_is_named() -> None:
    assert _refused(_tei, {"input": "a"}) == (
        422,
        "missing_field",
        "missing required field 'inputs'",
    )
    assert _refused(_openai, {"inputs": "a"}) == (
        422,
        "missing_field",
        "missing required field 'input'",
    )


def test_tei_flags_default_from_the_server_and_are_checked() -> None:
    """normalize and truncate: the server's defaults when absent or null, the caller's
    booleans when given, anything else 422."""
    r = parse_tei({"inputs": "a"}, max_inputs=4, normalize=False)
    assert (r.normalize, r.truncate, r.dimensions) == (False, False, None)
    r = parse_tei({"inputs": "a"}, max_inputs=4, normalize=True, truncate=True)
    assert (r.normalize, r.truncate) == (True, True)
    r = parse_tei(
        {"inputs": "a", "normalize": None, "truncate": None},
        max_inputs=4,
        normalize=True,
        truncate=True,
    )
    assert (r.normalize, r.truncate) == (True, True)
    r = _tei({"inputs": "a", "normalize": False, "truncate": True})
    assert (r.normalize, r.truncate) == (False, True)
    for name in ("normalize", "truncate"):
        bads: tuple[Any, ...] = (1, 0, "true", [])
        for bad in bads:
            assert _refused(_tei, {"inputs": "a", name: bad}) == (
                422,
                "invalid_field",
                f"{name!r} must be true or false",
            )


@pytest.mark.parametrize("direction", [None, "right", "Right", "RIGHT"])
def test_truncation_direction_right_is_served(direction: str | None) -> None:
    assert _tei({"inputs": "a", "truncation_direction": direction}).items == ("a",)


@pytest.mark.parametrize("direction", ["left", "Left", "", 1, ["right"]])
def test_other_truncation_directions_are_refused(direction: Any) -> None:
    assert _refused(_tei, {"inputs": "a", "truncation_direction": direction}) == (
        422,
        "invalid_field",
        "'truncation_direction' must be 'Right' (the only one served)",
    )


@pytest.mark.parametrize(("value", "dims"), [(None, None), (1, 1), (384, 384)])
def test_dimensions_accepted(value: int | None, dims: int | None) -> None:
    assert _tei({"inputs": "a", "dimensions": value}).dimensions == dims
    assert _openai({"input": "a", "dimensions": value}).dimensions == dims


@pytest.mark.parametrize("value", [0, -3, 1.0, "8", True])
def test_dimensions_must_be_a_positive_integer(value: Any) -> None:
    expected = (422, "invalid_field", "'dimensions' must be a positive integer")
    assert _refused(_tei, {"inputs": "a", "dimensions": value}) == expected
    assert _refused(_openai, {"input": "a", "dimensions": value}) == expected


def test_openai_fields() -> None:
    """encoding_format float (default, or null) or base64; model a string or absent; the
    server's normalize and truncate defaults, truncate overridable."""
    r = parse_openai({"input": "a"}, max_inputs=4, normalize=False)
    assert (r.encoding_format, r.model, r.normalize, r.truncate) == ("float", None, False, False)
    r = _openai({"input": "a", "encoding_format": None, "model": "m"}, truncate=True)
    assert (r.encoding_format, r.model, r.normalize, r.truncate) == ("float", "m", True, True)
    r = _openai({"input": "a", "encoding_format": "base64", "truncate": False}, truncate=True)
    assert (r.encoding_format, r.truncate) == ("base64", False)
    for bad in ("int8", "FLOAT", 1):
        assert _refused(_openai, {"input": "a", "encoding_format": bad}) == (
            422,
            "invalid_field",
            "'encoding_format' must be 'float' or 'base64'",
        )
    assert _refused(_openai, {"input": "a", "model": 3}) == (
        422,
        "invalid_field",
        "'model' must be a string",
    )


def test_texts_and_chars_count_text_inputs_only() -> None:
    r = _tei({"inputs": ["ab", [1, 2, 3], "cde"]})
    assert r.texts == ("ab", "cde")
    assert r.chars == 5

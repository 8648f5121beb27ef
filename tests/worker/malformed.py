"""The malformed-input table: every kind of bad body, as raw bytes, with the status and
error_type the worker must answer. Shared by the in-process test and the keep-alive test
against a real process, so both walk exactly the same cases."""

from __future__ import annotations

import json

import attrs

JSON = "application/json"


@attrs.frozen
class Case:
    name: str
    path: str
    body: bytes
    status: int
    error_type: str
    content_type: str | None = JSON


def _j(value: object) -> bytes:
    return json.dumps(value).encode()


DEEP = 100_000
CASES: tuple[Case, ...] = (
    Case("malformed json", "/embed", b'{"inputs": [', 400, "invalid_json"),
    Case("empty body", "/embed", b"", 400, "invalid_json"),
    Case("trailing garbage", "/embed", b'{"inputs": "a"} x', 400, "invalid_json"),
    Case("NaN literal", "/embed", b'{"inputs": "a", "normalize": NaN}', 400, "invalid_json"),
    Case(
        "number out of range",
        "/embed",
        b'{"inputs": "a", "dimensions": 1e999}',
        400,
        "invalid_json",
    ),
    Case(
        "deeply nested arrays",
        "/embed",
        b'{"inputs": ' + b"[" * DEEP + b"]" * DEEP + b"}",
        400,
        "invalid_json",
    ),
    Case(
        "deeply nested objects",
        "/v1/embeddings",
        b'{"input": ' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}",
        400,
        "invalid_json",
    ),
    Case(
        "nested lists within the depth limit",
        "/embed",
        _j({"inputs": [[[["a"]]]]}),
        422,
        "invalid_input",
    ),
    Case(
        "lone high surrogate escape", "/embed", b'{"inputs": ["\\ud800"]}', 400, "invalid_unicode"
    ),
    Case(
        "lone low surrogate escape",
        "/v1/embeddings",
        b'{"input": "x\\udc00y"}',
        400,
        "invalid_unicode",
    ),
    Case("surrogate bytes (CESU-8)", "/embed", b'{"inputs": "\xed\xa0\x80"}', 400, "invalid_utf8"),
    Case("invalid utf-8", "/embed", b'{"inputs": "\xff\xfe"}', 400, "invalid_utf8"),
    Case(
        "wrong content type",
        "/embed",
        _j({"inputs": "a"}),
        415,
        "unsupported_media_type",
        "text/plain",
    ),
    Case("no content type", "/embed", _j({"inputs": "a"}), 415, "unsupported_media_type", None),
    Case("body is a list", "/embed", _j(["a"]), 422, "invalid_body"),
    Case("body is a string", "/embed", _j("a"), 422, "invalid_body"),
    Case("body is null", "/v1/embeddings", b"null", 422, "invalid_body"),
    Case("missing inputs", "/embed", _j({"text": "a"}), 422, "missing_field"),
    Case("missing input", "/v1/embeddings", _j({"inputs": "a"}), 422, "missing_field"),
    Case("inputs null", "/embed", _j({"inputs": None}), 422, "invalid_input"),
    Case("inputs object", "/embed", _j({"inputs": {"a": 1}}), 422, "invalid_input"),
    Case("inputs number", "/embed", _j({"inputs": 5}), 422, "invalid_input"),
    Case("inputs bool", "/embed", _j({"inputs": True}), 422, "invalid_input"),
    Case("non-string item", "/embed", _j({"inputs": ["a", 3]}), 422, "invalid_input"),
    Case("null item", "/embed", _j({"inputs": ["a", None]}), 422, "invalid_input"),
    Case("empty list", "/embed", _j({"inputs": []}), 422, "empty_input"),
    Case("empty string", "/embed", _j({"inputs": ""}), 422, "empty_input"),
    Case("empty string in list", "/v1/embeddings", _j({"input": ["a", ""]}), 422, "empty_input"),
    Case(
        "token ids mixed with text", "/v1/embeddings", _j({"input": [1, "a"]}), 422, "invalid_input"
    ),
    Case(
        "token id as float",
        "/v1/embeddings",
        _j({"input": [[101, 2.5, 102]]}),
        422,
        "invalid_input",
    ),
    Case(
        "token id as bool",
        "/v1/embeddings",
        _j({"input": [[101, True, 102]]}),
        422,
        "invalid_input",
    ),
    Case(
        "token id huge",
        "/v1/embeddings",
        b'{"input": [101, 1000000000000000000000000]}',
        422,
        "invalid_input",
    ),
    Case("negative token id", "/embed", _j({"inputs": [[101, -1, 102]]}), 422, "invalid_input"),
    Case(
        "token id past the vocabulary", "/embed", _j({"inputs": [101, 10**6]}), 422, "invalid_input"
    ),
    Case("empty token id list", "/v1/embeddings", _j({"input": [[]]}), 422, "empty_input"),
    Case("too many token ids", "/v1/embeddings", _j({"input": [101] * 300}), 413, "input_too_long"),
    Case(
        "normalize not a bool",
        "/embed",
        _j({"inputs": "a", "normalize": "yes"}),
        422,
        "invalid_field",
    ),
    Case("truncate not a bool", "/embed", _j({"inputs": "a", "truncate": 1}), 422, "invalid_field"),
    Case(
        "left truncation",
        "/embed",
        _j({"inputs": "a", "truncation_direction": "Left"}),
        422,
        "invalid_field",
    ),
    Case(
        "dimensions zero",
        "/v1/embeddings",
        _j({"input": "a", "dimensions": 0}),
        422,
        "invalid_field",
    ),
    Case(
        "dimensions string",
        "/v1/embeddings",
        _j({"input": "a", "dimensions": "8"}),
        422,
        "invalid_field",
    ),
    Case(
        "dimensions bool", "/embed", _j({"inputs": "a", "dimensions": True}), 422, "invalid_field"
    ),
    Case(
        "dimensions float", "/embed", _j({"inputs": "a", "dimensions": 8.5}), 422, "invalid_field"
    ),
    Case(
        "dimensions above the model",
        "/v1/embeddings",
        _j({"input": "a", "dimensions": 385}),
        422,
        "invalid_field",
    ),
    Case(
        "encoding format unknown",
        "/v1/embeddings",
        _j({"input": "a", "encoding_format": "int8"}),
        422,
        "invalid_field",
    ),
    Case(
        "model not a string", "/v1/embeddings", _j({"input": "a", "model": 5}), 422, "invalid_field"
    ),
    Case("too long text", "/embed", _j({"inputs": "word " * 400}), 413, "input_too_long"),
    Case(
        "too long text openai",
        "/embeddings",
        _j({"input": ["ok", "word " * 400]}),
        413,
        "input_too_long",
    ),
    Case(
        "too long text in a huge body",
        "/embed",
        _j({"inputs": "a b " * 100_000}),
        413,
        "input_too_long",
    ),
)

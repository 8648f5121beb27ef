"""Reading and validating request bodies for both embedding routes.

Why this is strict and separate: a bad body must become one clear 4xx before it reaches
the batcher, where it could otherwise fail a forward pass shared with other callers. The
JSON parser is orjson: it refuses lone surrogates and nesting past 1024 levels itself,
without recursion, so no body can raise anything but a decode error here.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson
from starlette.requests import Request

from embedbalance_worker.errors import ApiError

ENCODING_FORMATS = ("float", "base64")

#: One input: a text, or token ids of the model's own vocabulary, sent as they are.
Item = str | tuple[int, ...]


@attrs.frozen
class EmbedRequest:
    """A validated embedding request, whichever route it came from."""

    items: tuple[Item, ...]
    normalize: bool
    truncate: bool
    encoding_format: str = "float"
    model: str | None = None
    dimensions: int | None = None

    @property
    def texts(self) -> tuple[str, ...]:
        """The text inputs (token-id inputs left out)."""
        return tuple(i for i in self.items if isinstance(i, str))

    @property
    def chars(self) -> int:
        """Characters of text to tokenize, to choose where tokenizing runs."""
        return sum(len(i) for i in self.items if isinstance(i, str))


def is_json(content_type: str) -> bool:
    """``application/json`` or any ``application/*+json``, parameters ignored."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def check_headers(request: Request, max_body_bytes: int) -> int | None:
    """Refuse what the headers already show is wrong; return the declared length.

    Runs before admission and before a byte of the body is read.
    """
    content_type = request.headers.get("content-type", "")
    if not is_json(content_type):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected Content-Type application/json, got {content_type or 'none'!r}",
        )
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.isdigit():
        raise ApiError(400, "invalid_header", "Content-Length is not a number")
    length = int(declared)
    if length > max_body_bytes:
        raise ApiError(413, "body_too_large", f"body exceeds the {max_body_bytes}-byte limit")
    return length


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it passes the limit."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise ApiError(413, "body_too_large", f"body exceeds the {max_body_bytes}-byte limit")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def decode_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or an :class:`ApiError` saying exactly what is wrong."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
        if "utf-8" in reason.lower() or "utf8" in reason.lower():
            raise ApiError(400, "invalid_utf8", f"body is not valid UTF-8: {reason}") from None
        if "surrogate" in reason:
            raise ApiError(400, "invalid_unicode", f"body has a lone surrogate: {reason}") from None
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {reason}") from None
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_body", "body must be a JSON object")
    return payload


def _ids(value: list[Any], where: str) -> tuple[int, ...]:
    for j, token in enumerate(value):
        if type(token) is not int:
            raise ApiError(
                422,
                "invalid_input",
                f"{where}[{j}] is {type(token).__name__}: token ids must all be integers",
            )
        if token < 0:
            raise ApiError(422, "invalid_input", f"{where}[{j}] is a negative token id")
    return tuple(value)


def _items(payload: dict[str, Any], field: str, max_inputs: int) -> tuple[Item, ...]:
    """``str | list[str] | list[int] | list[str | list[int]]``, as TEI and OpenAI accept."""
    if field not in payload:
        raise ApiError(422, "missing_field", f"missing required field {field!r}")
    value = payload[field]
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list):
        # A flat list of integers is one input given as token ids.
        items = [value] if value and all(type(v) is int for v in value) else value
    else:
        raise ApiError(
            422,
            "invalid_input",
            f"{field!r} must be a string, a list of strings, or token ids "
            f"(a list of integers or a list of such lists), got {type(value).__name__}",
        )
    if not items:
        raise ApiError(422, "empty_input", f"{field!r} must not be an empty list")
    if len(items) > max_inputs:
        raise ApiError(
            413,
            "too_many_inputs",
            f"{len(items)} inputs exceed the limit of {max_inputs} per request",
        )
    out: list[Item] = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        if isinstance(item, str):
            if not item:
                raise ApiError(422, "empty_input", f"{where} is an empty string")
            out.append(item)
        elif isinstance(item, list):
            if not item:
                raise ApiError(422, "empty_input", f"{where} is an empty list of token ids")
            out.append(_ids(item, where))
        else:
            raise ApiError(
                422,
                "invalid_input",
                f"{where} is {type(item).__name__}, expected a string or a list of token ids",
            )
    return tuple(out)


def _flag(payload: dict[str, Any], name: str, default: bool) -> bool:
    value = payload.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(422, "invalid_field", f"{name!r} must be true or false")
    return value


def _dimensions(payload: dict[str, Any]) -> int | None:
    value = payload.get("dimensions")
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise ApiError(422, "invalid_field", "'dimensions' must be a positive integer")
    return int(value)


def parse_tei(
    payload: dict[str, Any], *, max_inputs: int, normalize: bool, truncate: bool = False
) -> EmbedRequest:
    """``{"inputs": ..., "normalize": bool, "truncate": bool, "dimensions": int}`` (TEI)."""
    direction = payload.get("truncation_direction")
    if direction is not None and (not isinstance(direction, str) or direction.lower() != "right"):
        raise ApiError(
            422, "invalid_field", "'truncation_direction' must be 'Right' (the only one served)"
        )
    return EmbedRequest(
        items=_items(payload, "inputs", max_inputs),
        normalize=_flag(payload, "normalize", normalize),
        truncate=_flag(payload, "truncate", truncate),
        dimensions=_dimensions(payload),
    )


def parse_openai(
    payload: dict[str, Any], *, max_inputs: int, normalize: bool, truncate: bool = False
) -> EmbedRequest:
    """``{"input": ..., "model": str, "encoding_format": "float"|"base64", "dimensions": int}``."""
    fmt = payload.get("encoding_format", "float")
    if fmt is None:
        fmt = "float"
    if fmt not in ENCODING_FORMATS:
        raise ApiError(422, "invalid_field", "'encoding_format' must be 'float' or 'base64'")
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(422, "invalid_field", "'model' must be a string")
    return EmbedRequest(
        items=_items(payload, "input", max_inputs),
        normalize=normalize,
        truncate=_flag(payload, "truncate", truncate),
        encoding_format=str(fmt),
        model=model,
        dimensions=_dimensions(payload),
    )

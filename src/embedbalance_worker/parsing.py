"""Reading and validating request bodies for both embedding routes.

Why this is strict and separate: a bad body must become one clear 4xx before it reaches
the batcher, where it could otherwise fail a forward pass shared with other callers.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from starlette.requests import Request

from embedbalance_worker.errors import ApiError

ENCODING_FORMATS = ("float", "base64")


@attrs.frozen
class EmbedRequest:
    """A validated embedding request, whichever route it came from."""

    texts: tuple[str, ...]
    normalize: bool
    truncate: bool
    encoding_format: str = "float"
    model: str | None = None


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def read_json(request: Request, max_body_bytes: int) -> dict[str, Any]:
    """The body as a JSON object, or an :class:`ApiError` saying exactly what is wrong."""
    content_type = request.headers.get("content-type", "")
    if not _is_json(content_type):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected Content-Type application/json, got {content_type or 'none'!r}",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise ApiError(413, "body_too_large", f"body exceeds the {max_body_bytes}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise ApiError(413, "body_too_large", f"body exceeds the {max_body_bytes}-byte limit")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, "invalid_utf8", f"body is not valid UTF-8: {exc.reason} at byte {exc.start}"
        ) from None
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_body", "body must be a JSON object")
    return payload


def _texts(payload: dict[str, Any], field: str, max_inputs: int) -> tuple[str, ...]:
    if field not in payload:
        raise ApiError(422, "missing_field", f"missing required field {field!r}")
    value = payload[field]
    items: list[Any] = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ApiError(422, "invalid_input", f"{field!r} must be a string or a list of strings")
    if not items:
        raise ApiError(422, "empty_input", f"{field!r} must not be an empty list")
    if len(items) > max_inputs:
        raise ApiError(
            413,
            "too_many_inputs",
            f"{len(items)} inputs exceed the limit of {max_inputs} per request",
        )
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ApiError(
                422, "invalid_input", f"{field}[{i}] is {type(item).__name__}, expected a string"
            )
        if not item:
            raise ApiError(422, "empty_input", f"{field}[{i}] is an empty string")
    return tuple(items)


def _flag(payload: dict[str, Any], name: str, default: bool) -> bool:
    value = payload.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(422, "invalid_field", f"{name!r} must be true or false")
    return value


def parse_tei(payload: dict[str, Any], *, max_inputs: int, normalize: bool) -> EmbedRequest:
    """``{"inputs": str | [str], "normalize": bool, "truncate": bool}`` (TEI ``/embed``)."""
    return EmbedRequest(
        texts=_texts(payload, "inputs", max_inputs),
        normalize=_flag(payload, "normalize", normalize),
        truncate=_flag(payload, "truncate", False),
    )


def parse_openai(payload: dict[str, Any], *, max_inputs: int, normalize: bool) -> EmbedRequest:
    """``{"input": str | [str], "model": str, "encoding_format": "float" | "base64"}``."""
    fmt = payload.get("encoding_format", "float")
    if fmt is None:
        fmt = "float"
    if fmt not in ENCODING_FORMATS:
        raise ApiError(422, "invalid_field", "'encoding_format' must be 'float' or 'base64'")
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(422, "invalid_field", "'model' must be a string")
    return EmbedRequest(
        texts=_texts(payload, "input", max_inputs),
        normalize=normalize,
        truncate=_flag(payload, "truncate", False),
        encoding_format=str(fmt),
        model=model,
    )

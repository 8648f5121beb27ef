"""Which model a request is for, read from the request alone: cheap, and never in the way."""

from __future__ import annotations

import httpx
import pytest

import embedbalance as eb
from embedbalance.transport import request_model

URL = "http://embeddings/v1/embeddings"


def test_the_extension_wins_over_the_body() -> None:
    """If this fails, a caller cannot route a request by model without a body field
    (TEI-shaped requests carry none), or the body overrides what it said."""
    request = httpx.Request(
        "POST",
        URL,
        json={"input": ["a"], "model": "large"},
        extensions={eb.MODEL_EXTENSION: "small"},
    )
    assert request_model(request) == "small"
    tei = httpx.Request(
        "POST", "http://e/embed", json={"inputs": ["a"]}, extensions={eb.MODEL_EXTENSION: "x"}
    )
    assert request_model(tei) == "x"


@pytest.mark.parametrize("path", ["/v1/embeddings", "/embeddings", "/openai/v1/embeddings"])
def test_an_openai_body_names_its_model(path: str) -> None:
    """If this fails, the OpenAI SDK (or any OpenAI-shaped caller) pointed at the
    transport is not routed by the model it asks for."""
    request = httpx.Request("POST", "http://e" + path, json={"model": "large", "input": "a"})
    assert request_model(request) == "large"


@pytest.mark.parametrize(
    "request_",
    [
        httpx.Request(
            "POST",
            URL,
            content=b'{"input": ["a"], "model": ',
            headers={"content-type": "application/json"},
        ),
        httpx.Request(
            "POST",
            URL,
            content=b'{"model": "\xff\xfe"}',
            headers={"content-type": "application/json"},
        ),
        httpx.Request("POST", URL, json=["model"]),
        httpx.Request("POST", URL, json={"input": ["a"], "model": 3}),
        httpx.Request("POST", URL, json={"input": ["a"], "model": ""}),
        httpx.Request("POST", URL, json={"input": ['"model"']}),
        httpx.Request(
            "POST", URL, content=b'{"model": "a"}', headers={"content-type": "text/plain"}
        ),
        httpx.Request("POST", "http://e/embed", json={"inputs": ["a"], "model": "a"}),
        httpx.Request("GET", URL),
    ],
    ids=[
        "truncated",
        "not-utf8",
        "not-an-object",
        "not-a-string",
        "empty",
        "only-in-a-text",
        "not-json",
        "tei-path",
        "get",
    ],
)
def test_anything_else_names_no_model(request_: httpx.Request) -> None:
    """If this fails, a malformed or unrelated body raises in the transport (instead of
    reaching the server, which answers it) or is routed by a field it does not have."""
    assert request_model(request_) is None


def test_a_streamed_body_is_not_read_ahead() -> None:
    """If this fails, the transport consumes a streamed body to look for a model, and the
    server receives an empty one."""

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"model": "a", "input": ["x"]}'

    request = httpx.Request(
        "POST", URL, content=chunks(), headers={"content-type": "application/json"}
    )
    assert request_model(request) is None


def test_a_wrong_extension_is_refused() -> None:
    """If this fails, a non-string model extension silently means "any model"."""
    request = httpx.Request("POST", URL, json={}, extensions={eb.MODEL_EXTENSION: 3})
    with pytest.raises(ValueError, match=r"embedbalance\.model"):
        request_model(request)


def test_a_body_without_a_content_type_names_no_model() -> None:
    """An OpenAI-style POST whose content type is not given is sent on, naming no model,
    without an error. If this fails, a request without ``Content-Type`` raises inside
    the transport before it is sent."""
    request = httpx.Request("POST", "http://x.test/v1/embeddings", content=b'{"model": "m"}')
    assert "content-type" not in request.headers
    assert request_model(request) is None

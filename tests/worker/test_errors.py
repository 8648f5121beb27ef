"""Bad input gets a clear 4xx JSON error and never disturbs the next request."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

GOOD = {"inputs": ["still working"]}


def _assert_error(resp: Any, status: int, error_type: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error_type"] == error_type
    assert isinstance(body["error"], str)
    assert body["error"]


def _assert_still_serves(client: TestClient) -> None:
    resp = client.post("/embed", json=GOOD)
    assert resp.status_code == 200
    assert len(resp.json()) == 1
    assert len(resp.json()[0]) == 384


JSON = {"content-type": "application/json"}

CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    (
        "malformed json",
        "/embed",
        {"content": b'{"inputs": [', "headers": JSON},
        400,
        "invalid_json",
    ),
    (
        "wrong content type",
        "/embed",
        {"content": b'{"inputs": "a"}', "headers": {"content-type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    ("no content type", "/embed", {"content": b'{"inputs": "a"}'}, 415, "unsupported_media_type"),
    ("missing field", "/embed", {"json": {"text": "a"}}, 422, "missing_field"),
    ("missing field openai", "/v1/embeddings", {"json": {"inputs": "a"}}, 422, "missing_field"),
    ("non-string item", "/embed", {"json": {"inputs": ["a", 3]}}, 422, "invalid_input"),
    ("nested list", "/embed", {"json": {"inputs": [["a"]]}}, 422, "invalid_input"),
    (
        "token id out of vocabulary",
        "/v1/embeddings",
        {"json": {"input": [1, 10**6]}},
        422,
        "invalid_input",
    ),
    ("number instead of text", "/embed", {"json": {"inputs": 5}}, 422, "invalid_input"),
    ("empty list", "/embed", {"json": {"inputs": []}}, 422, "empty_input"),
    ("empty string", "/embed", {"json": {"inputs": ""}}, 422, "empty_input"),
    ("empty string in list", "/v1/embeddings", {"json": {"input": ["a", ""]}}, 422, "empty_input"),
    ("body not an object", "/embed", {"json": ["a"]}, 422, "invalid_body"),
    (
        "bad normalize flag",
        "/embed",
        {"json": {"inputs": "a", "normalize": "yes"}},
        422,
        "invalid_field",
    ),
    (
        "bad encoding format",
        "/v1/embeddings",
        {"json": {"input": "a", "encoding_format": "int8"}},
        422,
        "invalid_field",
    ),
    (
        "invalid utf-8",
        "/embed",
        {"content": b'{"inputs": "\xff\xfe"}', "headers": JSON},
        400,
        "invalid_utf8",
    ),
    ("too long, no truncate", "/embed", {"json": {"inputs": "word " * 400}}, 413, "input_too_long"),
    (
        "too long openai",
        "/v1/embeddings",
        {"json": {"input": "word " * 400}},
        413,
        "input_too_long",
    ),
]


@pytest.mark.parametrize(
    ("name", "path", "kwargs", "status", "error_type"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_request_is_a_json_4xx_and_the_next_request_succeeds(
    client: TestClient, name: str, path: str, kwargs: dict[str, Any], status: int, error_type: str
) -> None:
    """Each kind of bad input gets its own status and error_type, and the worker keeps serving."""
    _assert_error(client.post(path, **kwargs), status, error_type)
    _assert_still_serves(client)


def test_too_many_inputs_is_refused_with_the_configured_limit(make_client: Any) -> None:
    """More texts than --max-inputs is a 413 naming the limit; the limit itself is accepted."""
    client = make_client(max_inputs=4)
    resp = client.post("/embed", json={"inputs": ["a"] * 5})
    _assert_error(resp, 413, "too_many_inputs")
    assert "4" in resp.json()["error"]
    assert client.post("/embed", json={"inputs": ["a"] * 4}).status_code == 200


def test_body_over_the_size_limit_is_refused(make_client: Any) -> None:
    """A body larger than max_body_bytes is a 413 before any parsing."""
    client = make_client(max_body_bytes=1000)
    _assert_error(client.post("/embed", json={"inputs": "x" * 2000}), 413, "body_too_large")
    _assert_still_serves(client)


def test_unknown_route_and_wrong_method_are_json_errors(client: TestClient) -> None:
    """Routing errors use the same JSON error shape as validation errors."""
    _assert_error(client.get("/nope"), 404, "not_found")
    _assert_error(client.get("/embed"), 405, "method_not_allowed")
    _assert_error(client.post("/health"), 405, "method_not_allowed")
    _assert_still_serves(client)


def test_too_long_input_is_truncated_when_asked(client: TestClient) -> None:
    """truncate=true embeds an over-long text as its first max_input_length tokens."""
    long_text = "alpha beta gamma " * 200
    resp = client.post("/embed", json={"inputs": long_text, "truncate": True})
    assert resp.status_code == 200
    assert len(resp.json()[0]) == 384


def test_api_key_guards_everything_but_health(make_client: Any) -> None:
    """With an API key, a wrong or missing bearer token is 401; /health and /metrics stay open."""
    client = make_client(api_key="s3cret")
    _assert_error(client.post("/embed", json=GOOD), 401, "unauthorized")
    bad = {"Authorization": "Bearer wrong"}
    _assert_error(client.post("/embed", json=GOOD, headers=bad), 401, "unauthorized")
    _assert_error(client.get("/info", headers=bad), 401, "unauthorized")
    assert client.get("/metrics").status_code == 200, "metrics must be open by default"
    assert client.get("/health").status_code == 200
    ok = {"Authorization": "Bearer s3cret"}
    assert client.post("/embed", json=GOOD, headers=ok).status_code == 200
    assert client.post("/v1/embeddings", json={"input": "a"}, headers=ok).status_code == 200


def test_protect_metrics_puts_metrics_behind_the_api_key(make_client: Any) -> None:
    """protect_metrics=True makes /metrics need the bearer token, as it did before it was open."""
    client = make_client(api_key="s3cret", protect_metrics=True)
    _assert_error(client.get("/metrics"), 401, "unauthorized")
    ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert "embedbalance_worker_requests_total" in ok.text

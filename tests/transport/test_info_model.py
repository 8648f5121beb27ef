"""What a backend's ``GET /info`` says it serves: read once, never in the way."""

from __future__ import annotations

import pytest

from embedbalance.health_runner import model_from_info


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            200,
            b'{"model_id": "BAAI/bge-small-en-v1.5", "model_sha": null}',
            (True, "BAAI/bge-small-en-v1.5"),
        ),
        (200, b'{"model": "small"}', (True, "small")),
        (200, b'{"model_id": "", "model": "small"}', (True, "small")),
        (200, b'{"model_id": 3}', (True, None)),
        (200, b"[1, 2]", (True, None)),
        (200, b"not json", (True, None)),
        (200, b"\xff\xfe", (True, None)),
        (404, b'{"model_id": "x"}', (True, None)),
        (300, b'{"model_id": "x"}', (True, None)),
        (299, b'{"model_id": "x"}', (True, "x")),
        (200, b'{"model_id": "x"}', (True, "x")),
    ],
    ids=[
        "tei",
        "model-field",
        "empty-id",
        "not-a-string",
        "not-an-object",
        "not-json",
        "bytes",
        "404",
        "300",
        "299",
        "200",
    ],
)
def test_info_names_a_model_or_none(
    status: int, body: bytes, expected: tuple[bool, str | None]
) -> None:
    """If this fails, a model is read from something that does not name one (and the
    backend is routed wrongly), or a server without a usable /info is asked forever."""
    assert model_from_info(status, body) == expected

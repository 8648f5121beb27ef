"""The wire contract of each route, in process: shapes, headers, /info keys."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from starlette.testclient import TestClient

from embedbalance_worker import EmbeddingModel
from embedbalance_worker.model import cosine_rows

INFO_KEYS = {
    "model_id",
    "dimension",
    "max_input_length",
    "dtype",
    "device",
    "pooling",
    "normalize",
    "max_batch_tokens",
    "max_batch_size",
    "max_wait_ms",
    "max_inputs_per_request",
    "max_queue_tokens",
    "version",
}


def _load_headers_ok(headers: Any) -> None:
    assert int(headers["x-queue-depth"]) >= 0
    assert int(headers["x-in-flight"]) >= 0


def test_tei_embed_returns_a_list_of_unit_vectors_even_for_one_string(client: TestClient) -> None:
    """POST /embed with a bare string still answers [[...]] with normalised rows."""
    resp = client.post("/embed", json={"inputs": "hello world"})
    assert resp.status_code == 200
    rows = np.array(resp.json(), dtype=np.float32)
    assert rows.shape == (1, 384)
    assert abs(float(np.linalg.norm(rows[0])) - 1.0) < 1e-4
    _load_headers_ok(resp.headers)


def test_tei_normalize_false_returns_raw_pooled_vectors(
    client: TestClient, model: EmbeddingModel
) -> None:
    """normalize=false returns the un-normalised mean-pooled vector, same direction."""
    resp = client.post("/embed", json={"inputs": ["hello world"], "normalize": False})
    raw = np.array(resp.json(), dtype=np.float32)
    assert abs(float(np.linalg.norm(raw[0])) - 1.0) > 1e-3
    expected = model.encode(["hello world"], normalize=False)
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-5)


def test_openai_shape_with_usage_and_indices(client: TestClient) -> None:
    """POST /v1/embeddings answers the OpenAI list object with indices and token usage."""
    resp = client.post("/v1/embeddings", json={"input": ["a b c", "d"], "model": "whatever"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 384 for d in body["data"])
    assert body["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    # [CLS] a b c [SEP] + [CLS] d [SEP]
    assert body["usage"] == {"prompt_tokens": 8, "total_tokens": 8}
    _load_headers_ok(resp.headers)


def test_openai_base64_is_little_endian_float32_of_the_float_answer(client: TestClient) -> None:
    """encoding_format=base64 decodes (as <f4) to the same vector as the float format."""
    texts = ["one text", "another, longer text with more words"]
    floats = client.post("/v1/embeddings", json={"input": texts}).json()
    b64 = client.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64"}).json()
    for f, b in zip(floats["data"], b64["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert decoded.shape == (384,)
        np.testing.assert_allclose(decoded, np.array(f["embedding"], dtype=np.float32), atol=1e-6)


def test_both_routes_agree(client: TestClient) -> None:
    """The TEI and OpenAI routes give the same vector for the same text."""
    tei = np.array(client.post("/embed", json={"inputs": ["same text"]}).json(), dtype=np.float32)
    oai = client.post("/v1/embeddings", json={"input": "same text"}).json()
    vec = np.array([oai["data"][0]["embedding"]], dtype=np.float32)
    assert cosine_rows(tei, vec)[0] > 0.99999


def test_info_reports_every_contract_key(client: TestClient) -> None:
    """/info carries the keys clients size their requests by, with the model's real values."""
    info = client.get("/info").json()
    assert set(info) >= INFO_KEYS
    assert info["dimension"] == 384
    assert info["max_input_length"] == 256
    assert info["dtype"] == "float32"
    assert info["device"] == "cpu"
    assert info["pooling"] == "mean"


def test_health_is_200_when_ready(client: TestClient) -> None:
    """/health answers 200 once the (preloaded) model is serving."""
    assert client.get("/health").status_code == 200

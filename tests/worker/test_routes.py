"""The wire contract of each route, in process: shapes, headers, /info keys."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from starlette.testclient import TestClient

from embedbalance_worker import EmbeddingModel
from embedbalance_worker.model import cosine_rows

TEI_INFO_KEYS = {
    "model_id",
    "model_sha",
    "model_dtype",
    "model_type",
    "max_concurrent_requests",
    "max_input_length",
    "max_batch_tokens",
    "max_batch_requests",
    "max_client_batch_size",
    "auto_truncate",
    "tokenization_workers",
    "version",
}

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


def test_info_carries_tei_field_names_with_real_values(client: TestClient) -> None:
    """/info has TEI's field names (model_dtype, max_client_batch_size...) next to ours."""
    info = client.get("/info").json()
    assert set(info) >= TEI_INFO_KEYS
    assert info["model_dtype"] == info["dtype"] == "float32"
    assert info["max_client_batch_size"] == info["max_inputs_per_request"] == 256
    assert info["max_batch_requests"] == info["max_batch_size"]
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert isinstance(info["max_batch_tokens"], int)
    assert info["max_batch_tokens"] > 0
    assert info["auto_truncate"] is False


def test_token_id_inputs_embed_like_the_text_they_came_from(
    client: TestClient, model: EmbeddingModel
) -> None:
    """OpenAI token-id inputs (list[int] and list[list[int]], as LangChain sends them) are
    the model's own ids, embedded as given: the same rows as the texts they encode."""
    texts = ["hello world", "token ids from a client-side tokenizer"]
    ids = model.tokenize(texts)
    by_text = client.post("/v1/embeddings", json={"input": texts}).json()["data"]
    one = client.post("/v1/embeddings", json={"input": ids[0]}).json()
    many = client.post("/v1/embeddings", json={"input": ids}).json()
    tei = client.post("/embed", json={"inputs": ids})
    assert len(one["data"]) == 1
    assert len(many["data"]) == 2
    assert tei.status_code == 200
    expected = np.array([d["embedding"] for d in by_text], dtype=np.float32)
    got_one = np.array([one["data"][0]["embedding"]], dtype=np.float32)
    got_many = np.array([d["embedding"] for d in many["data"]], dtype=np.float32)
    assert cosine_rows(got_one, expected[:1]).min() > 0.99999
    assert cosine_rows(got_many, expected).min() > 0.99999
    assert cosine_rows(np.array(tei.json(), dtype=np.float32), expected).min() > 0.99999
    assert many["usage"]["prompt_tokens"] == sum(len(x) for x in ids)


def test_over_long_token_ids_are_cut_when_asked(client: TestClient) -> None:
    """Token-id inputs over the model's limit are cut to it with truncate=true."""
    resp = client.post("/v1/embeddings", json={"input": [101] + [2000] * 400, "truncate": True})
    assert resp.status_code == 200
    assert resp.json()["usage"]["prompt_tokens"] == 256


def test_dimensions_truncates_and_renormalises(client: TestClient) -> None:
    """dimensions=d returns the first d components, renormalised to unit length (Matryoshka),
    on both routes."""
    full = np.array(client.post("/embed", json={"inputs": ["shorter vectors"]}).json()[0])
    oai = client.post("/v1/embeddings", json={"input": "shorter vectors", "dimensions": 64}).json()
    tei = client.post("/embed", json={"inputs": "shorter vectors", "dimensions": 64}).json()
    expected = full[:64] / np.linalg.norm(full[:64])
    for row in (np.array(oai["data"][0]["embedding"]), np.array(tei[0])):
        assert row.shape == (64,)
        assert abs(float(np.linalg.norm(row)) - 1.0) < 1e-4
        np.testing.assert_allclose(row, expected, atol=1e-5)


def test_embeddings_alias_serves_the_openai_shape(client: TestClient) -> None:
    """POST /embeddings (the path infinity and gateways use) answers like /v1/embeddings."""
    alias = client.post("/embeddings", json={"input": ["same text"]}).json()
    main = client.post("/v1/embeddings", json={"input": ["same text"]}).json()
    assert alias["object"] == "list"
    np.testing.assert_allclose(
        alias["data"][0]["embedding"], main["data"][0]["embedding"], atol=1e-6
    )


def test_auto_truncate_cuts_instead_of_413(make_client: Any) -> None:
    """With auto_truncate, an over-long text is cut unless the request says truncate=false."""
    client = make_client(auto_truncate=True)
    assert client.post("/embed", json={"inputs": "word " * 400}).status_code == 200
    refused = client.post("/embed", json={"inputs": "word " * 400, "truncate": False})
    assert refused.status_code == 413


TIMING_HEADERS = (
    "x-compute-time",
    "x-total-time",
    "x-tokenization-time",
    "x-queue-time",
    "x-inference-time",
)


def test_answers_carry_teis_timing_headers(client: TestClient) -> None:
    """Both routes answer with TEI's timing headers: whole milliseconds, the parts no more
    than the total, characters and tokens of the request (tokens as in the OpenAI usage).
    If this fails, dashboards built for TEI read nothing, and a balancer loses the exact
    service time (x-inference-time) it trusts over its own guesses."""
    text = "the timing headers of one request"
    tei = client.post("/embed", json={"inputs": [text, text]})
    openai = client.post("/v1/embeddings", json={"input": [text, text]})
    for r in (tei, openai):
        assert r.status_code == 200
        ms = {name: r.headers[name] for name in TIMING_HEADERS}
        assert all(v.isdigit() for v in ms.values()), ms
        parts = sum(int(ms[k]) for k in ("x-tokenization-time", "x-queue-time", "x-inference-time"))
        assert parts <= int(ms["x-total-time"]) == int(ms["x-compute-time"])
        assert r.headers["x-compute-type"] == "cpu"
        assert r.headers["x-compute-characters"] == str(2 * len(text))
    assert openai.headers["x-compute-tokens"] == str(openai.json()["usage"]["total_tokens"])
    assert tei.headers["x-compute-tokens"] == openai.headers["x-compute-tokens"]
    # Errors carry no timing (nothing was computed).
    assert "x-inference-time" not in client.post("/embed", json={"inputs": []}).headers

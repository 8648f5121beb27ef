"""The OpenAI SDK and ``langchain_openai`` reach many replicas through a balancing
transport passed as their ``http_client``; no adapter needed."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")

from tests.helpers.worker_proc import WorkerProcess  # noqa: E402
from tests.integrations._adapters import MANY, assert_rows_equal, victim  # noqa: E402
from tests.integrations._checks import TEXTS, Reference, dead_url  # noqa: E402

from embedbalance import AllAttemptsFailed, BalancingTransport, HealthCheck  # noqa: E402

__all__ = ["victim"]

#: Any name: the host is replaced by the chosen backend's; only the path is kept.
BASE_URL = "http://embeddings/v1"
MODEL = "all-MiniLM-L6-v2"


def _sdk(transport: BalancingTransport, max_retries: int) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=BASE_URL,
        api_key="unused",
        max_retries=max_retries,
        http_client=httpx.Client(transport=transport, timeout=30.0),
    )


# The SDK's default (base64) in the default run; "float" in the slow suite (each
# variant starts a replica of its own to kill, and the default run keeps its budget).
@pytest.mark.parametrize("encoding_format", [pytest.param("float", marks=pytest.mark.slow), None])
def test_sdk_embeddings_survive_a_replica_killed_mid_run(
    urls: list[str], reference: Reference, victim: WorkerProcess, encoding_format: str | None
) -> None:
    """If this fails, the OpenAI SDK over a balancing transport loses or corrupts rows
    when a replica dies, or the SDK's default base64 answers stop decoding."""
    transport = BalancingTransport([*urls, victim.url], health_check=None)
    sdk = _sdk(transport, max_retries=0)
    extra = {} if encoding_format is None else {"encoding_format": encoding_format}
    rows: list[list[float]] = []
    chunks = [MANY[i : i + 8] for i in range(0, 160, 8)]
    killed_at = None
    with sdk:
        for n, chunk in enumerate(chunks):
            answer = sdk.embeddings.create(model=MODEL, input=chunk, **extra)
            rows.extend(list(map(float, item.embedding)) for item in answer.data)
            victim_requests = transport.stats().pool.by_url()[victim.url.rstrip("/")].requests
            if killed_at is None and victim_requests > 0:
                victim.kill()  # it has answered: the rest of the run meets it dead
                killed_at = n
    assert killed_at is not None, "the victim never took traffic"
    assert killed_at < len(chunks) - 3, "the victim died too late to matter"
    assert_rows_equal(rows, MANY, reference)


@pytest.mark.skipif(
    not issubclass(AllAttemptsFailed, httpx.TransportError),
    reason="the SDK retries only httpx errors; AllAttemptsFailed is not one in this version",
)
def test_sdk_retries_multiply_the_transports(urls: list[str]) -> None:
    """If this fails, the documented interplay is wrong: each of the SDK's tries is one
    whole balanced request (the transport's own retries on other backends inside it),
    so ``max_retries=2`` over dead replicas makes three transport requests."""
    transport = BalancingTransport(
        [dead_url(), dead_url()], health_check=None, retry=2, outlier_detection=None
    )
    sdk = openai.OpenAI(
        base_url=BASE_URL,
        api_key="unused",
        max_retries=2,
        http_client=httpx.Client(transport=transport, timeout=5.0),
    )
    with sdk, pytest.raises(openai.APIConnectionError):
        sdk.embeddings.create(model=MODEL, input=["x"], encoding_format="float")
    stats = transport.stats()
    assert stats.requests == 3
    assert sum(b.requests for b in stats.pool.backends) == 6


def test_sdk_with_no_sdk_retries_fails_over_inside_the_transport(
    urls: list[str], reference: Reference
) -> None:
    """If this fails, ``max_retries=0`` (the setting docs recommend) leaves a caller
    exposed to a dead replica the transport should have stepped around."""
    transport = BalancingTransport(
        [dead_url(), urls[0]], health_check=HealthCheck(interval=60.0), outlier_detection=None
    )
    with _sdk(transport, max_retries=0) as sdk:
        for text in TEXTS[:6]:
            answer = sdk.embeddings.create(model=MODEL, input=[text], encoding_format="float")
            assert_rows_equal([answer.data[0].embedding], [text], reference)


def test_langchain_openai_embeddings_over_a_balancing_transport(
    urls: list[str], reference: Reference
) -> None:
    """If this fails, ``langchain_openai.OpenAIEmbeddings(http_client=...)`` no longer
    reaches the replicas as documented (it must not tokenise with tiktoken first:
    ``check_embedding_ctx_length=False`` sends the texts themselves)."""
    lc = pytest.importorskip("langchain_openai")
    transport = BalancingTransport(urls)
    with httpx.Client(transport=transport, timeout=30.0) as http:
        emb = lc.OpenAIEmbeddings(
            model=MODEL,
            base_url=BASE_URL,
            api_key="unused",
            http_client=http,
            max_retries=0,
            check_embedding_ctx_length=False,
            chunk_size=16,
        )
        rows = emb.embed_documents(TEXTS[:40])
        query = emb.embed_query(TEXTS[40])
    assert_rows_equal(rows, TEXTS[:40], reference)
    assert_rows_equal([query], [TEXTS[40]], reference)
    # Three chunks of at most 16 texts and one query, every one through the transport.
    assert transport.stats().requests == 4
    assert np.isfinite(rows).all()
    transport.close()

"""EmbeddingClient against real workers on loopback (and fakes where a worker cannot
misbehave on demand)."""

from __future__ import annotations

import collections
import json
import socket
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from tests.client._checks import assert_rows_match
from tests.client.fake_server import FakeBackend
from tests.helpers.worker_proc import WorkerProcess

import embedbalance as eb
from embedbalance._batching import estimate_tokens
from embedbalance.client import BatchEvent, EmbeddingClient, EmbeddingRequestError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_rows_match_single_worker_embedding(
    urls: list[str], corpus: list[str], reference: dict[str, np.ndarray]
) -> None:
    """Balanced, split, length-sorted and reassembled rows each equal their own text's
    embedding, and both workers did part of the work."""
    events: list[BatchEvent] = []
    with EmbeddingClient(urls, batch_size=8, truncate=True, on_batch=events.append) as client:
        matrix = client.embed(corpus)
    assert_rows_match(matrix, corpus, reference)
    per_backend = collections.Counter(e.backend for e in events)
    assert set(per_backend) == set(urls)
    assert sum(e.texts for e in events) == len(corpus)


def test_unsorted_plan_gives_the_same_rows(
    urls: list[str], corpus: list[str], reference: dict[str, np.ndarray]
) -> None:
    """Turning length sorting off changes the grouping, never the result."""
    with EmbeddingClient(urls, sort_by_length=False, truncate=True) as client:
        assert_rows_match(client.embed(tuple(corpus[:80])), corpus[:80], reference)


def test_embed_iter_yields_chunks_in_order(
    urls: list[str], corpus: list[str], reference: dict[str, np.ndarray]
) -> None:
    """A generator input comes back as chunk_size-row arrays, in input order."""
    with EmbeddingClient(urls, truncate=True) as client:
        chunks = list(client.embed_iter((t for t in corpus[:130]), chunk_size=50))
    assert [c.shape[0] for c in chunks] == [50, 50, 30]
    assert_rows_match(np.concatenate(chunks), corpus[:130], reference)


def test_embed_iter_reads_its_input_lazily(fake: FakeBackend) -> None:
    """Only about two chunks of an endless input are read before the first is yielded:
    the second is already on its way while the caller holds the first."""
    pulled = 0

    def endless() -> Iterator[str]:
        nonlocal pulled
        while True:
            pulled += 1
            yield f"text number {pulled}"

    with EmbeddingClient([fake.url], health_check=None) as client:
        stream = client.embed_iter(endless(), chunk_size=10)
        first = next(stream)
        stream.close()
    assert first.shape == (10, 7)
    assert first[:, 0].tolist() == [len(f"text number {i}") for i in range(1, 11)]
    assert 20 <= pulled <= 21


def test_killed_worker_loses_no_rows(
    workers: tuple[WorkerProcess, ...], corpus: list[str], reference: dict[str, np.ndarray]
) -> None:
    """SIGKILL of a backend mid-job: its sub-batches are retried elsewhere, every row is
    still its own text's embedding."""
    victim = workers[2]
    killed = threading.Event()

    def kill_on_first_answer(event: BatchEvent) -> None:
        if event.backend == victim.url and not killed.is_set():
            killed.set()
            victim.kill()

    urls = [workers[0].url, workers[1].url, victim.url]
    with EmbeddingClient(
        urls,
        balancer=eb.RoundRobin(),
        batch_size=4,
        truncate=True,
        retry=eb.Retry(attempts=3),
        on_batch=kill_on_first_answer,
    ) as client:
        matrix = client.embed(corpus[:120])
        stats = client.stats()
    assert killed.is_set(), "the victim never answered, so nothing was killed"
    assert_rows_match(matrix, corpus[:120], reference)
    assert stats.pool.by_url()[victim.url].failures >= 1


def test_unreachable_backend_is_retried_elsewhere(
    urls: list[str], corpus: list[str], reference: dict[str, np.ndarray]
) -> None:
    """A backend refusing connections never costs a row."""
    dead = f"http://127.0.0.1:{_free_port()}"
    with EmbeddingClient(
        [dead, urls[0]], balancer=eb.RoundRobin(), health_check=None, truncate=True
    ) as client:
        assert_rows_match(client.embed(corpus[:40]), corpus[:40], reference)


def test_empty_input_returns_zero_rows_without_embedding(fake: FakeBackend) -> None:
    """An empty input asks /info for the dimension and never posts an empty list."""
    with EmbeddingClient([fake.url], health_check=None) as client:
        out = client.embed([])
        again = client.embed(iter(()))
    assert out.shape == again.shape == (0, 7)
    assert out.dtype == np.float32
    assert [(m, p) for m, p, _ in fake.requests] == [("GET", "/info")]


def test_empty_input_with_known_dimension_makes_no_request(fake: FakeBackend) -> None:
    """With dimension= given, an empty input costs no request at all."""
    with EmbeddingClient([fake.url], health_check=None, dimension=5) as client:
        assert client.embed([]).shape == (0, 5)
    assert fake.requests == []


def test_empty_input_without_info_is_a_documented_error(fake: FakeBackend) -> None:
    """A server without a usable /info makes an empty input fail clearly."""
    with EmbeddingClient([fake.url], health_check=None) as client:
        fake.dim = 0  # /info now reports a dimension of 0
        with pytest.raises(eb.ResponseFormatError, match="pass dimension="):
            client.embed([])


@pytest.mark.parametrize(
    ("texts", "error", "match"),
    [
        (["fine", 3], TypeError, r"texts\[1\] is int"),
        (["fine", b"bytes"], TypeError, r"texts\[1\] is bytes"),
        (b"bytes", TypeError, "not bytes"),
        (["fine", ""], ValueError, r"texts\[1\] is an empty string"),
    ],
)
def test_bad_items_fail_before_any_request(
    fake: FakeBackend, texts: object, error: type[Exception], match: str
) -> None:
    """Wrong items are refused up front, so no backend sees part of a bad job."""
    with (
        EmbeddingClient([fake.url], health_check=None) as client,
        pytest.raises(error, match=match),
    ):
        client.embed(texts)  # type: ignore[arg-type]
    assert fake.requests == []


def test_dimension_mismatch_names_the_wrong_backend(urls: list[str], corpus: list[str]) -> None:
    """A backend serving another model is named instead of mixing vectors."""
    with (
        FakeBackend(dim=7) as wrong,
        EmbeddingClient(
            [urls[0], wrong.url], balancer=eb.RoundRobin(), health_check=None, dimension=384
        ) as client,
        pytest.raises(eb.DimensionMismatch) as info,
    ):
        client.embed(corpus[:64])
    assert info.value.url == wrong.url
    assert (info.value.expected, info.value.got) == (384, 7)


def test_dimension_mismatch_without_a_given_dimension(urls: list[str], corpus: list[str]) -> None:
    """Without dimension=, the first size seen is pinned and the other one refused."""
    with (
        FakeBackend(dim=7) as wrong,
        EmbeddingClient(
            [urls[0], wrong.url], balancer=eb.RoundRobin(), health_check=None
        ) as client,
        pytest.raises(eb.DimensionMismatch) as info,
    ):
        client.embed(corpus[:64])
    assert {info.value.expected, info.value.got} == {384, 7}
    assert info.value.url in (urls[0], wrong.url)


@pytest.mark.parametrize(
    ("mode", "api"),
    [("wrong_rows", "tei"), ("not_json", "tei"), ("ragged", "tei"), ("no_data", "openai")],
)
def test_malformed_answers_raise_response_format_error(mode: str, api: str) -> None:
    """A 200 whose body is not the documented shape is an error, never a guess."""
    with (
        FakeBackend(mode=mode) as bad,
        EmbeddingClient(
            [bad.url],
            api=api,
            health_check=None,  # type: ignore[arg-type]
        ) as client,
        pytest.raises(eb.ResponseFormatError, match=bad.url),
    ):
        client.embed(["one", "two", "three"])


def test_input_too_long_is_a_request_error(urls: list[str]) -> None:
    """A 4xx (an over-long input without truncate) surfaces with the server's reason."""
    with (
        EmbeddingClient(urls, health_check=None) as client,
        pytest.raises(EmbeddingRequestError) as info,
    ):
        client.embed(["word " * 2000])
    assert info.value.status == 413
    assert "truncate" in info.value.detail


def test_each_sub_batch_carries_its_token_count_as_cost(fake: FakeBackend) -> None:
    """The transport receives every sub-batch's estimated tokens as its cost."""
    seen: list[tuple[float, list[str]]] = []

    class Recording(httpx.BaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.HTTPTransport()

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "POST":
                body = json.loads(request.read())
                seen.append((request.extensions["embedbalance.cost"], body["inputs"]))
            return self.inner.handle_request(request)

    texts = [f"{'x' * (i * 13 % 300)} text {i}" for i in range(100)]
    with EmbeddingClient(
        [fake.url], health_check=None, transport=Recording(), batch_tokens=500
    ) as client:
        client.embed(texts)
    assert len(seen) > 1
    for cost, sent in seen:
        assert cost == sum(estimate_tokens(t) for t in sent)
        assert cost <= 500 or len(sent) == 1
    assert sorted(t for _, sent in seen for t in sent) == sorted(texts)


def test_tokenizer_drives_the_split(fake: FakeBackend) -> None:
    """A user tokenizer's counts, not the character estimate, size the sub-batches."""
    events: list[BatchEvent] = []
    with EmbeddingClient(
        [fake.url],
        health_check=None,
        tokenizer=lambda text: 100,
        batch_tokens=300,
        on_batch=events.append,
    ) as client:
        out = client.embed([f"t{i}" for i in range(20)])
    assert out[:, 0].tolist() == [len(f"t{i}") for i in range(20)]
    assert max(e.texts for e in events) == 3
    assert all(e.tokens == 100 * e.texts for e in events)


def test_max_concurrency_bounds_requests_in_flight() -> None:
    """No more than max_concurrency sub-batches are ever outstanding at once."""
    with (
        FakeBackend(delay=0.05) as slow,
        EmbeddingClient([slow.url], health_check=None, batch_size=2, max_concurrency=3) as client,
    ):
        client.embed([f"t{i}" for i in range(40)])
    assert slow.max_in_flight == 3


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_openai_shape_matches_tei_shape(
    urls: list[str], corpus: list[str], reference: dict[str, np.ndarray], encoding_format: str
) -> None:
    """The OpenAI route (floats or base64) yields the same rows as the TEI route."""
    with EmbeddingClient(
        urls,
        api="openai",
        model="all-MiniLM-L6-v2",
        encoding_format=encoding_format,  # type: ignore[arg-type]
        truncate=True,
    ) as client:
        assert_rows_match(client.embed(corpus[:40]), corpus[:40], reference)


def test_progress_bar_only_when_asked_or_large(
    fake: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    """progress=None stays quiet below the threshold; True and large jobs draw a bar."""
    with EmbeddingClient([fake.url], health_check=None, progress_threshold=50) as client:
        client.embed(["a"] * 10)
        assert "embedding" not in capsys.readouterr().err
        client.embed(["a"] * 60)
        drawn = capsys.readouterr().err
        assert "60/60" in drawn
        assert "embedding:" in drawn  # the bar says what it counts
    with EmbeddingClient([fake.url], health_check=None, progress=True) as client:
        client.embed(["a"] * 3)
        assert "3/3" in capsys.readouterr().err


def test_closed_client_refuses_work(fake: FakeBackend) -> None:
    """A closed client says so instead of hanging or silently reopening."""
    client = EmbeddingClient([fake.url], health_check=None)
    client.close()
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.embed(["a"])

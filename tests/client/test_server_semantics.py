"""The client against servers that misbehave the way real ones do: TEI's 424 and 413,
NaN/null rows, limits stated in ``/info``; and the call-shape promises (one ``str``,
repeats sent once, ``truncate`` only when set, client-side ``normalize``/``dimensions``,
concurrency that follows the pool's live membership). Every server is a real HTTP
server on loopback (``FakeBackend``), so requests cross a socket."""

from __future__ import annotations

import logging

import httpx
import numpy as np
import pytest
from tests.client.fake_server import FakeBackend, InFlight

import embedbalance as eb
from embedbalance import EmbeddingClient, EmbeddingRequestError

QUIET = {"health_check": None, "balancer": eb.RoundRobin}
TEXTS = [f"text number {i} " + "x" * i for i in range(24)]


def _expected(dim: int, texts: list[str]) -> np.ndarray:
    return np.array([[float(len(t))] + [0.5] * (dim - 1) for t in texts], dtype=np.float32)


@pytest.mark.parametrize("mode", ["nan", "null", "string", "424", "not_json", "wrong_rows"])
def test_a_replica_answering_garbage_is_routed_around(mode: str) -> None:
    """A replica that answers NaN/null/non-number rows, TEI's 424, or a malformed body
    fails its attempts, which land on the good replicas: every row comes back right."""
    with (
        FakeBackend() as good1,
        FakeBackend() as good2,
        FakeBackend(mode=mode) as bad,
        EmbeddingClient([good1.url, bad.url, good2.url], batch_size=4, **QUIET) as client,
    ):
        rows = client.embed(TEXTS)
        stats = client.stats().pool.by_url()
    np.testing.assert_array_equal(rows, _expected(7, TEXTS))
    assert bad.embed_requests, "the bad replica was tried"
    assert stats[bad.url].failures >= 1
    assert stats[bad.url].successes == 0


def test_garbage_everywhere_raises_the_format_error() -> None:
    """When every replica answers NaN rows, the call fails with ResponseFormatError
    rather than returning a single NaN."""
    with (
        FakeBackend(mode="nan") as a,
        FakeBackend(mode="nan") as b,
        EmbeddingClient([a.url, b.url], **QUIET) as client,
        pytest.raises(eb.ResponseFormatError, match="NaN"),
    ):
        client.embed(TEXTS[:3])


def test_424_everywhere_raises_all_attempts_failed() -> None:
    """A model failing on every replica ends in AllAttemptsFailed naming each replica."""
    with (
        FakeBackend(mode="424") as a,
        FakeBackend(mode="424") as b,
        EmbeddingClient([a.url, b.url], **QUIET) as client,
        pytest.raises(eb.AllAttemptsFailed) as info,
    ):
        client.embed(TEXTS[:3])
    assert {x.url for x in info.value.attempts} == {a.url, b.url}
    assert isinstance(info.value, httpx.TransportError)


def test_413_splits_the_sub_batch_and_remembers_the_limit() -> None:
    """TEI's 413 for too many inputs halves the sub-batch until it fits, keeps every row in
    order, and later calls start at the server's stated limit."""
    with (
        FakeBackend(max_batch=3) as server,
        EmbeddingClient([server.url], batch_size=16, probe_info=False, **QUIET) as client,
    ):
        rows = client.embed(TEXTS[:16])
        np.testing.assert_array_equal(rows, _expected(7, TEXTS[:16]))
        sizes = [len(b["inputs"]) for b in server.embed_requests]
        assert sizes[0] == 16  # refused
        assert max(sizes[1:]) <= 8
        served = [n for n in sizes if n <= 3]
        assert sum(served) == 16
        server.requests.clear()
        client.embed(TEXTS[:16])
        # The stated limit (3), not a halving of the refused size (which gives 2).
        assert max(len(b["inputs"]) for b in server.embed_requests) == 3


def test_info_limits_cap_sub_batches_before_any_413() -> None:
    """A server's max_client_batch_size in /info caps sub-batches from the first call."""
    with (
        FakeBackend(max_batch=4) as server,
        EmbeddingClient([server.url], batch_size=16, **QUIET) as client,
    ):
        rows = client.embed(TEXTS[:16])
    np.testing.assert_array_equal(rows, _expected(7, TEXTS[:16]))
    assert all(len(b["inputs"]) <= 4 for b in server.embed_requests)


def test_a_4xx_is_an_httpx_status_error_with_the_servers_reason() -> None:
    """A single text over the limit (413 on one input) is the caller's error: an
    EmbeddingRequestError that httpx code can catch as HTTPStatusError."""
    with (
        FakeBackend(max_batch=0) as server,
        EmbeddingClient([server.url], probe_info=False, **QUIET) as client,
        pytest.raises(httpx.HTTPStatusError) as info,
    ):
        client.embed(["one"])
    assert isinstance(info.value, EmbeddingRequestError)
    assert info.value.status == 413
    assert "maximum allowed batch size 0" in info.value.detail
    assert len(server.embed_requests) == 1  # never resent elsewhere or split further


def test_truncate_is_sent_only_when_set() -> None:
    """Without truncate= the body carries no 'truncate' key, so the server's own setting
    (TEI's --auto-truncate) applies; with it, the value is sent."""
    with FakeBackend() as server:
        with EmbeddingClient([server.url], **QUIET) as client:
            client.embed(["a"])
        with EmbeddingClient([server.url], truncate=True, **QUIET) as client:
            client.embed(["b"])
    first, second = server.embed_requests
    assert "truncate" not in first
    assert second["truncate"] is True


def test_a_single_string_gives_one_row() -> None:
    """embed("text") returns that text's row, shape (dim,), like sentence-transformers."""
    with FakeBackend() as server, EmbeddingClient([server.url], **QUIET) as client:
        row = client.embed("hello")
        rows = client.embed(["hello"])
    assert row.shape == (7,)
    np.testing.assert_array_equal(row, rows[0])


def test_repeated_texts_are_sent_once_and_answered_in_place() -> None:
    """Identical texts in one call are embedded once; each position still gets its row."""
    texts = ["alpha", "beta", "alpha", "gamma", "beta", "alpha"]
    with FakeBackend() as server, EmbeddingClient([server.url], **QUIET) as client:
        rows = client.embed(texts)
    sent = [t for body in server.embed_requests for t in body["inputs"]]
    assert sorted(sent) == ["alpha", "beta", "gamma"]
    np.testing.assert_array_equal(rows, _expected(7, texts))


def test_normalize_and_dimensions_are_applied_when_the_server_does_not() -> None:
    """Over the OpenAI API (no normalize field) normalize=True is done by the client, and
    dimensions= truncates rows a server sent too long, then renormalises them."""
    with FakeBackend(dim=8) as server:
        with EmbeddingClient([server.url], api="openai", normalize=True, **QUIET) as client:
            rows = client.embed(["abc", "abcdef"])
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-6)
        with EmbeddingClient([server.url], dimensions=3, dtype="float16", **QUIET) as client:
            short = client.embed(["abc", "abcdef"])
    assert short.shape == (2, 3)
    assert short.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(short.astype(np.float32), axis=1), 1.0, rtol=1e-3)
    assert server.embed_requests[-1]["dimensions"] == 3


def test_rows_a_server_shaped_itself_are_left_alone_and_normalize_false_is_kept() -> None:
    """``dimensions=3`` against a server that honoured it: its rows come back as sent
    (not renormalised: the client only renormalises rows it cut itself). Rows cut by
    the client are renormalised when ``normalize=True`` (even over TEI, which would
    have normalised the uncut rows) and left as cut when ``normalize=False``. If this
    fails, the client rescales vectors the caller asked to keep raw, or hands back
    cut vectors that are no longer unit length."""
    with (
        FakeBackend(dim=3) as exact,
        EmbeddingClient([exact.url], dimensions=3, **QUIET) as client,
    ):
        rows = client.embed(["abc", "abcdef"])
    np.testing.assert_array_equal(rows, [[3.0, 0.5, 0.5], [6.0, 0.5, 0.5]])
    with FakeBackend(dim=8) as long:
        with EmbeddingClient([long.url], dimensions=3, normalize=False, **QUIET) as client:
            raw = client.embed(["abc", "abcdef"])
        with EmbeddingClient([long.url], dimensions=3, normalize=True, **QUIET) as client:
            unit = client.embed(["abc", "abcdef"])
    np.testing.assert_array_equal(raw, [[3.0, 0.5, 0.5], [6.0, 0.5, 0.5]])
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)


def test_concurrency_follows_the_live_membership() -> None:
    """Sub-batches in flight are sized from the pool as it is now: a client created
    with one backend (as with DNS discovery still filling) uses more once more join."""
    group = InFlight()
    backends = [FakeBackend(delay=0.05, group=group) for _ in range(4)]
    try:
        # No slow start: the backends joining below take their full turns at once, so
        # each is sure to be used (RoundRobin honours slow start otherwise).
        with EmbeddingClient([backends[0].url], batch_size=1, slow_start=None, **QUIET) as client:
            client.embed(TEXTS[:12])
            assert group.peak == 2  # two per live backend
            for extra in backends[1:]:
                client.transport.pool.add(extra.url)
            client.embed(TEXTS[:24])
        assert group.peak > 2
        assert all(b.embed_requests for b in backends[1:])
    finally:
        for backend in backends:
            backend.close()


def test_info_is_one_backends_info_or_a_documented_error() -> None:
    """``info()`` returns a backend's ``/info`` object; a 404 is an EmbeddingRequestError
    naming the backend and the server's message, a body that is not an object a
    ResponseFormatError. If this fails, callers get a bare KeyError or a list where the
    docs promise a dict, or an error that does not say which replica."""
    with (
        FakeBackend(dim=5) as ok,
        FakeBackend(mode="info_missing") as missing,
        FakeBackend(mode="info_list") as listed,
    ):
        with EmbeddingClient([ok.url], probe_info=False, **QUIET) as client:
            assert client.info() == {"dimension": 5, "model_id": "fake"}
        with (
            EmbeddingClient([missing.url], probe_info=False, **QUIET) as client,
            pytest.raises(EmbeddingRequestError) as refused,
        ):
            client.info()
        assert (refused.value.url, refused.value.status) == (missing.url, 404)
        assert refused.value.detail == "no route"
        assert refused.value.request.method == "GET"  # the server's own answer is kept
        with (
            EmbeddingClient([listed.url], probe_info=False, **QUIET) as client,
            pytest.raises(eb.ResponseFormatError, match=r"/info is not an object$") as bad,
        ):
            client.info()
        assert str(bad.value) == f"backend {listed.url}: /info is not an object"


@pytest.mark.anyio
async def test_async_info_is_the_same() -> None:
    with (
        FakeBackend(dim=5) as ok,
        FakeBackend(mode="info_missing") as missing,
        FakeBackend(mode="info_list") as listed,
    ):
        async with eb.AsyncEmbeddingClient([ok.url], probe_info=False, **QUIET) as client:
            assert await client.info() == {"dimension": 5, "model_id": "fake"}
        async with eb.AsyncEmbeddingClient([missing.url], probe_info=False, **QUIET) as client:
            with pytest.raises(EmbeddingRequestError) as refused:
                await client.info()
        assert (refused.value.url, refused.value.status, refused.value.detail) == (
            missing.url,
            404,
            "no route",
        )
        assert refused.value.request.method == "GET"
        async with eb.AsyncEmbeddingClient([listed.url], probe_info=False, **QUIET) as client:
            with pytest.raises(eb.ResponseFormatError) as bad:
                await client.info()
        assert str(bad.value) == f"backend {listed.url}: /info is not an object"


@pytest.mark.parametrize(
    ("mode", "dim", "why"),
    [
        ("ok", 1, None),
        ("ok", 5, None),
        ("info_missing", 5, "HTTP 404"),
        ("info_list", 5, "no positive integer 'dimension'"),
    ],
)
def test_an_empty_input_asks_info_for_the_dimension(mode: str, dim: int, why: str | None) -> None:
    """Embedding nothing gives a (0, dimension) array, the dimension read from ``/info``;
    when ``/info`` cannot tell, a ResponseFormatError says which replica and what to do.
    If this fails, an empty batch crashes downstream code that expects a 2-D array."""
    with (
        FakeBackend(mode=mode, dim=dim) as server,
        EmbeddingClient([server.url], probe_info=False, **QUIET) as client,
    ):
        if why is None:
            assert client.embed([]).shape == (0, dim)
            return
        with pytest.raises(eb.ResponseFormatError) as error:
            client.embed([])
    assert str(error.value) == (
        f"cannot tell the embedding dimension for an empty input: GET /info on "
        f"{server.url} gave {why}; pass dimension= to the client"
    )


def test_an_empty_input_asks_a_replica_of_the_clients_model() -> None:
    """If this fails, the dimension of an empty answer is another model's."""
    with FakeBackend(dim=5) as small, FakeBackend(dim=7) as large:
        backends = [eb.Backend(small.url, model="small"), eb.Backend(large.url, model="large")]
        for _ in range(4):
            with EmbeddingClient(backends, model="large", probe_info=False, **QUIET) as client:
                assert client.embed([]).shape == (0, 7)


@pytest.mark.anyio
async def test_async_empty_input_asks_a_replica_of_the_clients_model() -> None:
    with FakeBackend(dim=5) as small, FakeBackend(dim=7) as large:
        backends = [eb.Backend(small.url, model="small"), eb.Backend(large.url, model="large")]
        for _ in range(4):
            async with eb.AsyncEmbeddingClient(
                backends, model="large", probe_info=False, **QUIET
            ) as client:
                assert (await client.embed([])).shape == (0, 7)
                # Several calls on one client: round-robin would reach the other replica.
                assert [(await client.info())["dimension"] for _ in range(4)] == [7] * 4


def test_a_request_error_built_without_a_response_still_reads_like_one() -> None:
    """EmbeddingRequestError made by hand (or from a failed attempt without a response)
    carries a POST request to the backend and a response of its status. If this fails,
    code that catches httpx.HTTPStatusError crashes reading ``.request``/``.response``."""
    error = EmbeddingRequestError("http://10.0.0.1:8000", 413, "too many inputs")
    assert str(error) == "backend http://10.0.0.1:8000 answered HTTP 413: too many inputs"
    assert (error.request.method, str(error.request.url)) == ("POST", "http://10.0.0.1:8000")
    assert error.response.status_code == 413
    assert error.response.request is error.request
    real = httpx.Response(404, request=httpx.Request("GET", "http://10.0.0.2/info"))
    wrapped = EmbeddingRequestError("http://10.0.0.2", 404, "no route", real)
    assert wrapped.response is real
    assert wrapped.request is real.request


def test_a_413_that_states_no_limit_halves_until_the_batch_fits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 413 without TEI's stated limit (a proxy's) halves the refused size each time and
    remembers the smallest; every row comes back in order. If this fails, a client
    behind a body-size limit retries the same size forever or drops rows."""
    with (
        FakeBackend(max_batch=3, mode="413_plain", dim=7) as server,
        EmbeddingClient([server.url], batch_size=16, probe_info=False, **QUIET) as client,
        caplog.at_level(logging.INFO, logger="embedbalance"),
    ):
        np.testing.assert_array_equal(client.embed(TEXTS[:16]), _expected(7, TEXTS[:16]))
        messages = [r.getMessage() for r in caplog.records]
        assert "a backend refused 16 texts at once: sub-batches now hold at most 8" in messages
        assert "a backend refused 4 texts at once: sub-batches now hold at most 2" in messages
        server.requests.clear()
        np.testing.assert_array_equal(client.embed(TEXTS[:16]), _expected(7, TEXTS[:16]))
        sizes = [len(b["inputs"]) for b in server.embed_requests]
        assert (max(sizes), sum(sizes)) == (2, 16), sizes  # the remembered limit, no 413


def test_info_asks_a_replica_of_the_clients_model() -> None:
    """If this fails, ``info()`` of a client for one model describes another."""
    with FakeBackend(dim=5) as small, FakeBackend(dim=7) as large:
        backends = [eb.Backend(small.url, model="small"), eb.Backend(large.url, model="large")]
        for _ in range(4):
            with EmbeddingClient(backends, model="large", probe_info=False, **QUIET) as client:
                assert client.info()["dimension"] == 7


@pytest.mark.anyio
async def test_the_bulk_limit_counts_only_replicas_of_the_clients_model() -> None:
    """A bulk client's per-replica floor and ceiling count the replicas it may use: those
    of its model. If this fails, a bulk client for a model with one replica in a pool of
    many sizes its work for all of them and floods that one."""
    backends = [
        eb.Backend("http://127.0.0.1:9", model="small"),
        eb.Backend("http://127.0.0.2:9", model="large"),
        eb.Backend("http://127.0.0.3:9", model="large"),
    ]
    with EmbeddingClient(backends, model="large", priority="bulk", **QUIET) as client:
        assert client._usable_backends() == 2
    async with eb.AsyncEmbeddingClient(
        backends, model="large", priority="bulk", **QUIET
    ) as aclient:
        assert aclient._usable_backends() == 2


@pytest.mark.anyio
async def test_async_embed_iter_chunks_by_1024_by_default_and_refuses_zero() -> None:
    """If this fails, the async twin's chunks differ from the documented default (1024)
    or a chunk size of 1 is refused (or 0 accepted and looping forever)."""
    texts = [f"t{i}" for i in range(1025)]
    with FakeBackend(dim=3) as server:
        async with eb.AsyncEmbeddingClient([server.url], probe_info=False, **QUIET) as client:
            shapes = [c.shape for c in [c async for c in client.embed_iter(texts)]]
            assert shapes == [(1024, 3), (1, 3)]
            ones = [c.shape for c in [c async for c in client.embed_iter(texts[:2], chunk_size=1)]]
            assert ones == [(1, 3), (1, 3)]
            with pytest.raises(ValueError, match=r"^chunk_size must be >= 1, got 0$"):
                async for _ in client.embed_iter(texts, chunk_size=0):
                    pass


@pytest.mark.anyio
async def test_async_embed_iter_draws_a_bar_with_the_known_total(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A sized corpus gives the progress bar its total (so a large job shows one without
    being asked); an unsized stream does not. If this fails, async corpus jobs show no
    bar, or a bar without an end."""
    pytest.importorskip("tqdm", reason="the progress extra (tqdm) draws the bar")
    texts = [f"t{i}" for i in range(60)]
    with FakeBackend(dim=3) as server:
        async with eb.AsyncEmbeddingClient(
            [server.url], probe_info=False, progress_threshold=50, **QUIET
        ) as client:
            assert len([c async for c in client.embed_iter(texts, chunk_size=25)]) == 3
            assert "60/60" in capsys.readouterr().err
            streamed = [c async for c in client.embed_iter(iter(texts), chunk_size=25)]
            assert len(streamed) == 3
            assert "embedding" not in capsys.readouterr().err  # size unknown: below threshold


def test_sync_embed_iter_chunks_by_1024_by_default_and_refuses_zero(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The sync twin of the chunking rules, and its progress bar's known total."""
    pytest.importorskip("tqdm", reason="the progress extra (tqdm) draws the bar")
    texts = [f"t{i}" for i in range(1025)]
    with (
        FakeBackend(dim=3) as server,
        EmbeddingClient([server.url], probe_info=False, progress_threshold=1000, **QUIET) as client,
    ):
        assert [c.shape for c in client.embed_iter(texts)] == [(1024, 3), (1, 3)]
        assert "1025/1025" in capsys.readouterr().err
        assert [c.shape for c in client.embed_iter(texts[:2], chunk_size=1)] == [(1, 3), (1, 3)]
        with pytest.raises(ValueError, match=r"^chunk_size must be >= 1, got 0$"):
            next(client.embed_iter(texts, chunk_size=0))


@pytest.mark.anyio
async def test_embed_iter_sends_each_chunk_to_the_model_named() -> None:
    """``embed_iter(model=...)`` routes every chunk to that model's replicas, sync and
    async. If this fails, a corpus job for one model is embedded by another."""
    with FakeBackend(dim=5) as small, FakeBackend(dim=7) as large:
        backends = [eb.Backend(small.url, model="small"), eb.Backend(large.url, model="large")]
        with EmbeddingClient(backends, probe_info=False, **QUIET) as client:
            shapes = {c.shape for c in client.embed_iter(TEXTS, chunk_size=5, model="large")}
            assert shapes <= {(5, 7), (4, 7)}
        async with eb.AsyncEmbeddingClient(backends, probe_info=False, **QUIET) as aclient:
            chunks = [c async for c in aclient.embed_iter(TEXTS, chunk_size=5, model="small")]
            assert {c.shape[1] for c in chunks} == {5}


def _answer(status: int, **kwargs: object) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", "http://10.0.0.1/embed"), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("response", "detail"),
    [
        (
            _answer(413, json={"error": "batch too large", "error_type": "Validation"}),
            "batch too large",
        ),
        (_answer(400, json={"error": {"message": "bad input", "type": "invalid"}}), "bad input"),
        (_answer(422, json={"message": "no such model"}), "no such model"),
        (_answer(422, json={"detail": [1]}), "{'detail': [1]}"),
        (_answer(400, json=["a"]), "['a']"),
        (_answer(400, text="x" * 600), "x" * 500),
        (_answer(400, json=["y" * 600]), ("['" + "y" * 600)[:500]),
        (_answer(400, text=""), "(empty body)"),
        (_answer(404, json={"error": 3}), "{'error': 3}"),
    ],
    ids=[
        "tei",
        "openai",
        "message",
        "other",
        "list",
        "long-text",
        "long-json",
        "empty",
        "odd-error",
    ],
)
def test_a_4xx_detail_is_the_servers_message_in_any_of_the_usual_shapes(
    response: httpx.Response, detail: str
) -> None:
    """EmbeddingRequestError.detail is what the server said: TEI's ``error``, OpenAI's
    ``error.message``, a bare ``message``, else the body itself (cut at 500 characters).
    If this fails, users read a Python repr or nothing where the server explained."""
    from embedbalance.client import _error_detail

    assert _error_detail(response) == detail


def test_an_answer_without_a_named_backend_is_placed_by_its_request() -> None:
    """An answer whose transport did not name the backend (``BACKEND_EXTENSION``) is
    attributed to its request's scheme, host and port, the path left out. If this
    fails, errors about such an answer name no replica, or a path as if it were one."""
    from embedbalance.client import backend_url

    named = httpx.Response(200, extensions={eb.BACKEND_EXTENSION: eb.Backend("http://a:1/v2")})
    assert backend_url(named) == "http://a:1/v2"
    bare = httpx.Response(200, request=httpx.Request("POST", "https://h.example:8443/v1/x"))
    assert backend_url(bare) == "https://h.example:8443"


def test_a_500_everywhere_is_all_attempts_failed_not_the_callers_error() -> None:
    """Replicas that answer 500 to every try: the call raises ``AllAttemptsFailed``
    naming each attempt, not ``EmbeddingRequestError`` (that one means the request
    itself was refused, 4xx). If this fails, a server crash reads to the caller as a
    bad request that retrying cannot fix."""
    with (
        FakeBackend(mode="500") as one,
        FakeBackend(mode="500") as two,
        EmbeddingClient([one.url, two.url], probe_info=False, **QUIET) as client,
        pytest.raises(eb.AllAttemptsFailed) as info,
    ):
        client.embed(["a"])
    assert {a.url for a in info.value.attempts} == {one.url, two.url}
    assert all("HTTP 500" in a.error for a in info.value.attempts)


def test_sort_by_length_groups_texts_of_a_like_length() -> None:
    """With ``sort_by_length`` (the default) each sub-batch holds texts of a like
    length, so no short text is padded to a long one's size; with it off, sub-batches
    follow input order. If this fails, the switch does nothing and every sub-batch
    costs its longest text's padding."""
    texts = ["x" * n for n in (1, 40, 2, 39, 3, 38)]
    seen: dict[bool, list[list[int]]] = {}
    for sort in (True, False):
        with (
            FakeBackend() as server,
            EmbeddingClient(
                [server.url], batch_size=2, sort_by_length=sort, probe_info=False, **QUIET
            ) as client,
        ):
            rows = client.embed(texts)
        np.testing.assert_array_equal(rows[:, 0], [1, 40, 2, 39, 3, 38])
        seen[sort] = sorted(
            sorted(len(t) for t in body["inputs"]) for body in server.embed_requests
        )
    assert seen[False] == [[1, 40], [2, 39], [3, 38]]  # input order, two at a time

    def padding(batches: list[list[int]]) -> int:
        return sum(len(b) * max(b) - sum(b) for b in batches)

    assert padding(seen[True]) < padding(seen[False]) / 2


def test_replicas_of_a_per_call_model_that_disagree_on_its_size_are_refused() -> None:
    """Two replicas of model "large" answering 9- and 5-wide rows to a per-call
    ``model="large"``: the call raises ``DimensionMismatch`` naming both sizes (the
    client's own model, never asked, plays no part). If this fails, a per-call model's
    rows of two sizes are mixed, or the error hides which sizes met."""
    with (
        FakeBackend(dim=9) as nine,
        FakeBackend(dim=5) as five,
        EmbeddingClient(
            [eb.Backend(nine.url, model="large"), eb.Backend(five.url, model="large")],
            api="openai",
            batch_size=1,
            probe_info=False,
            **QUIET,  # type: ignore[arg-type]
        ) as client,
        pytest.raises(eb.DimensionMismatch) as info,
    ):
        client.embed(["a", "b", "c", "d"], model="large")
    assert {info.value.expected, info.value.got} == {9, 5}


def test_a_size_refused_on_every_replica_names_the_replica_that_answered_last() -> None:
    """``dimension=4`` pinned and the only replica answering 7-wide rows: the answer
    fails the check on every replica tried, and the ``DimensionMismatch`` raised names
    that replica's URL with both sizes. If this fails, the error for the commonest
    deployment mistake (a replica serving another model) does not say where."""
    with (
        FakeBackend(dim=7) as wrong,
        EmbeddingClient([wrong.url], dimension=4, probe_info=False, **QUIET) as client,
        pytest.raises(eb.DimensionMismatch) as info,
    ):
        client.embed(["a", "b"])
    assert (info.value.url, info.value.expected, info.value.got) == (wrong.url, 4, 7)

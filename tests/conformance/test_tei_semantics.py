"""What the transports make of a TEI deployment's answers, against TEI-semantics stubs:
which statuses are a failure of the replica (retried elsewhere, counted toward
ejection), which are overload (avoided, never ejected), which are the caller's own
mistake (returned as they are), and what the caller gets when every attempt failed."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import numpy as np
import pytest
from tei_stub import ERROR_STATUS, TeiStub, tei_vector

import embedbalance as eb

from .conftest import Favourite, quiet

pytestmark = pytest.mark.timeout(60)

Stubs = Callable[..., list[TeiStub]]


# -- the stub itself follows TEI's router --------------------------------------------


def test_stub_answers_each_tei_error_with_its_status_and_body(stubs: Stubs) -> None:
    """Each TEI error type comes back with the router's status and {"error", "error_type"} body on /embed and {"message", "code", "type"} on /v1/embeddings (else the stub tests the wrong contract)."""
    (stub,) = stubs(1, max_client_batch_size=2, max_input_length=3)
    with httpx.Client(base_url=stub.url, timeout=10) as http:
        cases = {
            "validation": {"inputs": ["a", "b", "c"]},  # over max_client_batch_size
            "empty": {"inputs": []},
        }
        for error_type, body in cases.items():
            r = http.post("/embed", json=body)
            assert r.status_code == ERROR_STATUS[error_type]
            assert r.json()["error_type"] == error_type
            assert r.json()["error"]
        too_long = http.post("/embed", json={"inputs": ["one two three four"]})
        assert too_long.status_code == 413
        assert "must have less than 3 tokens" in too_long.json()["error"]
        assert (
            http.post(
                "/embed", json={"inputs": ["one two three four"], "truncate": True}
            ).status_code
            == 200
        )
        for mode, error_type in (("424", "backend"), ("429", "overloaded"), ("503", "unhealthy")):
            stub.mode = mode
            r = http.post("/embed", json={"inputs": ["a"]})
            assert (r.status_code, r.json()["error_type"]) == (ERROR_STATUS[error_type], error_type)
            o = http.post("/v1/embeddings", json={"input": ["a"], "model": "m"})
            assert o.status_code == ERROR_STATUS[error_type]
            assert o.json()["code"] == ERROR_STATUS[error_type]
            assert o.json()["type"] == error_type
            assert "retry-after" not in r.headers  # TEI sends none
        stub.mode = "503"
        assert http.get("/health").json() == {"error": "unhealthy", "error_type": "unhealthy"}


def test_stub_info_and_rows_follow_tei(stubs: Stubs) -> None:
    """/info carries TEI's sizing fields and /embed rows are the deterministic vectors with TEI's timing headers (else client tests compare against nothing)."""
    (stub,) = stubs(1, max_client_batch_size=7, max_batch_tokens=99, max_input_length=11)
    with httpx.Client(base_url=stub.url, timeout=10) as http:
        info = http.get("/info").json()
        assert (
            info["max_client_batch_size"],
            info["max_batch_tokens"],
            info["max_input_length"],
        ) == (7, 99, 11)
        assert info["model_id"] == stub.model_id
        r = http.post("/embed", json={"inputs": ["x y", "z"]})
        assert r.json() == [tei_vector("x y"), tei_vector("z")]
        for header in ("x-queue-time", "x-inference-time", "x-total-time", "x-compute-tokens"):
            assert r.headers[header].isdigit()
        o = http.post("/v1/embeddings", json={"input": ["x y", "z"], "model": "m"}).json()
        assert [d["index"] for d in o["data"]] == [0, 1]
        assert o["data"][1]["embedding"] == tei_vector("z")


# -- status semantics, both twins -----------------------------------------------------


def _send_sync(
    urls: list[str], first: str, **kwargs: object
) -> tuple[httpx.Response, eb.TransportStats]:
    transport = eb.BalancingTransport(urls, balancer=Favourite(first), **quiet(**kwargs))
    with httpx.Client(transport=transport, base_url="http://tei", timeout=10) as client:
        response = client.post("/embed", json={"inputs": ["hello"]})
        return response, transport.stats()


async def _send_async(
    urls: list[str], first: str, **kwargs: object
) -> tuple[httpx.Response, eb.TransportStats]:
    transport = eb.AsyncBalancingTransport(urls, balancer=Favourite(first), **quiet(**kwargs))
    async with httpx.AsyncClient(transport=transport, base_url="http://tei", timeout=10) as client:
        response = await client.post("/embed", json={"inputs": ["hello"]})
        return response, transport.stats()


@pytest.mark.parametrize("mode", ["424", "500", "503"])
def test_model_failure_is_a_replica_failure_retried_elsewhere_sync(stubs: Stubs, mode: str) -> None:
    """TEI's 424 (and 5xx) from one replica is retried on another and counted as that replica's failure (else one failing replica fails the job and stays 'healthy')."""
    bad, good = stubs(2)
    bad.mode = mode
    response, stats = _send_sync([bad.url, good.url], bad.url)
    assert response.status_code == 200
    assert response.json() == [tei_vector("hello")]
    assert response.extensions[eb.BACKEND_EXTENSION].url == good.url
    assert response.extensions[eb.ATTEMPTS_EXTENSION] == (eb.Attempt(bad.url, f"HTTP {mode}"),)
    by_url = stats.pool.by_url()
    assert (by_url[bad.url].failures, by_url[good.url].successes) == (1, 1)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["424", "500"])
async def test_model_failure_is_a_replica_failure_retried_elsewhere_async(
    stubs: Stubs, mode: str
) -> None:
    """The async twin also retries a 424/500 elsewhere and counts it as the replica's failure (else the twins disagree on TEI)."""
    bad, good = stubs(2)
    bad.mode = mode
    response, stats = await _send_async([bad.url, good.url], bad.url)
    assert response.status_code == 200
    assert response.extensions[eb.ATTEMPTS_EXTENSION] == (eb.Attempt(bad.url, f"HTTP {mode}"),)
    assert stats.pool.by_url()[bad.url].failures == 1


def test_424_replica_is_ejected_by_outlier_detection(stubs: Stubs) -> None:
    """Consecutive 424s eject the replica (else the fastest-answering broken replica keeps drawing traffic)."""
    bad, good = stubs(2)
    bad.mode = "424"
    transport = eb.BalancingTransport(
        [bad.url, good.url],
        balancer=Favourite(bad.url),
        health_check=None,
        slow_start=None,
        outlier_detection=eb.OutlierDetection(consecutive_failures=3),
    )
    with httpx.Client(transport=transport, base_url="http://tei", timeout=10) as client:
        for _ in range(6):
            assert client.post("/embed", json={"inputs": ["a"]}).status_code == 200
    state = transport.stats().pool.by_url()[bad.url]
    assert state.ejections >= 1
    assert bad.embed_requests == 3  # ejected after the third: later requests never went there


def test_429_is_overload_retried_elsewhere_and_never_ejects(stubs: Stubs) -> None:
    """TEI's 429 (no Retry-After) is retried on another replica and never ejects the busy one (else load spikes eject healthy replicas)."""
    busy, good = stubs(2)
    busy.mode = "429"
    transport = eb.BalancingTransport(
        [busy.url, good.url],
        balancer=Favourite(busy.url),
        health_check=None,
        slow_start=None,
        outlier_detection=eb.OutlierDetection(consecutive_failures=2),
    )
    with httpx.Client(transport=transport, base_url="http://tei", timeout=10) as client:
        first = client.post("/embed", json={"inputs": ["a"]})
        assert first.status_code == 200
        assert first.extensions[eb.ATTEMPTS_EXTENSION] == (eb.Attempt(busy.url, "HTTP 429"),)
    state = transport.stats().pool.by_url()[busy.url]
    assert (state.failures, state.overloads, state.ejections) == (0, 1, 0)


@pytest.mark.parametrize(
    ("body", "status"),
    [({"inputs": []}, 400), ({"inputs": ["a"] * 40}, 413), ({"wrong": 1}, 422)],
)
def test_callers_own_mistakes_are_returned_not_retried(
    stubs: Stubs, body: object, status: int
) -> None:
    """400/413/422 come back from the first replica unchanged, not retried and not a failure (else a bad request is sent to every replica and ejects healthy ones)."""
    first, other = stubs(2)
    transport = eb.BalancingTransport(
        [first.url, other.url], balancer=Favourite(first.url), **quiet()
    )
    with httpx.Client(transport=transport, base_url="http://tei", timeout=10) as client:
        response = client.post("/embed", json=body)
    assert response.status_code == status
    assert eb.ATTEMPTS_EXTENSION not in response.extensions
    assert (first.embed_requests, other.embed_requests) == (1, 0)
    state = transport.stats().pool.by_url()[first.url]
    assert state.failures == 0


def test_every_replica_failing_returns_the_last_answer_with_its_attempts(stubs: Stubs) -> None:
    """When all three replicas answer 424 the caller gets the last 424 (TEI's body intact) and the three attempts (else a proxy-like caller loses the server's error)."""
    three = stubs(3)
    for stub in three:
        stub.mode = "424"
    response, _ = _send_sync([s.url for s in three], three[0].url, retry=eb.Retry(attempts=3))
    assert response.status_code == 424
    assert response.json()["error_type"] == "backend"
    attempts = response.extensions[eb.ATTEMPTS_EXTENSION]
    assert [a.error for a in attempts] == ["HTTP 424"] * 3
    assert {a.url for a in attempts} == {s.url for s in three}


def test_retry_false_returns_a_429_as_the_response(stubs: Stubs) -> None:
    """With retry=False a 429 comes back as the response, not as an exception (else callers cannot read the server's answer)."""
    busy, other = stubs(2)
    busy.mode = "429"
    response, _ = _send_sync([busy.url, other.url], busy.url, retry=False)
    assert response.status_code == 429
    assert response.json()["error_type"] == "overloaded"
    assert other.embed_requests == 0


@pytest.mark.anyio
async def test_retry_false_returns_a_429_as_the_response_async(stubs: Stubs) -> None:
    """The async twin also hands back a non-retried 429 as the response (else the twins disagree)."""
    busy, other = stubs(2)
    busy.mode = "429"
    response, _ = await _send_async([busy.url, other.url], busy.url, retry=False)
    assert response.status_code == 429
    assert other.embed_requests == 0


# -- the validate hook: a wrong 2xx answer is the replica's failure ------------------


def _finite_rows(response: httpx.Response) -> int:
    rows = np.asarray(response.json(), dtype=np.float64)  # null -> nan
    if not np.isfinite(rows).all():
        raise ValueError("non-finite values in rows")
    return int(rows.shape[0])


def test_null_rows_fail_validation_and_are_retried_elsewhere(stubs: Stubs) -> None:
    """A 200 whose rows are null (TEI's NaN) fails the validate hook, is retried on another replica, and the validator's value comes back (else NaN rows reach the caller)."""
    broken, good = stubs(2)
    broken.mode = "null_rows"
    transport = eb.BalancingTransport(
        [broken.url, good.url], balancer=Favourite(broken.url), **quiet()
    )
    with httpx.Client(transport=transport, base_url="http://tei", timeout=10) as client:
        response = client.post(
            "/embed", json={"inputs": ["a", "b"]}, extensions={eb.VALIDATE_EXTENSION: _finite_rows}
        )
    assert response.status_code == 200
    assert response.extensions[eb.VALIDATED_EXTENSION] == 2
    (attempt,) = response.extensions[eb.ATTEMPTS_EXTENSION]
    assert attempt.url == broken.url
    assert "non-finite" in attempt.error
    assert transport.stats().pool.by_url()[broken.url].failures == 1


@pytest.mark.anyio
async def test_null_rows_fail_validation_and_are_retried_elsewhere_async(stubs: Stubs) -> None:
    """The async twin applies the validate hook the same way (else async callers get NaN rows)."""
    broken, good = stubs(2)
    broken.mode = "null_rows"
    transport = eb.AsyncBalancingTransport(
        [broken.url, good.url], balancer=Favourite(broken.url), **quiet()
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://tei", timeout=10) as client:
        response = await client.post(
            "/embed", json={"inputs": ["a"]}, extensions={eb.VALIDATE_EXTENSION: _finite_rows}
        )
    assert response.status_code == 200
    assert response.extensions[eb.VALIDATED_EXTENSION] == 1
    assert transport.stats().pool.by_url()[broken.url].failures == 1


# -- EmbeddingClient over three replicas, one answering 424 ---------------------------


@pytest.mark.parametrize("balancer", [None, eb.RoundRobin], ids=["default", "round-robin"])
def test_client_embeds_every_row_in_order_with_one_replica_failing(
    stubs: Stubs, balancer: type[eb.Balancer] | None
) -> None:
    """EmbeddingClient over three replicas, one answering 424, returns every row in input order, equal to a good replica's own answers (else one failing replica fails the whole job)."""
    replicas = stubs(3)
    replicas[1].mode = "424"
    texts = [f"text {i} " + "word " * (i % 9) for i in range(60)]
    with httpx.Client(base_url=replicas[0].url, timeout=10) as direct:
        expected = np.asarray(
            [direct.post("/embed", json={"inputs": [t]}).json()[0] for t in texts], dtype=np.float32
        )
    with eb.EmbeddingClient(
        [r.url for r in replicas],
        batch_size=4,
        balancer=balancer() if balancer is not None else None,
        health_check=None,
    ) as client:
        rows = client.embed(texts)
    assert rows.shape == expected.shape
    np.testing.assert_array_equal(rows, expected)
    if balancer is not None:
        assert replicas[1].embed_requests >= 1  # the failing replica was really tried


@pytest.mark.anyio
async def test_async_client_embeds_every_row_in_order_with_one_replica_failing(
    stubs: Stubs,
) -> None:
    """AsyncEmbeddingClient over three replicas, one answering 424, returns every row in order (else async jobs fail on one bad replica)."""
    replicas = stubs(3)
    replicas[0].mode = "424"
    texts = [f"async text {i}" for i in range(40)]
    expected = np.asarray([tei_vector(t) for t in texts], dtype=np.float32)
    async with eb.AsyncEmbeddingClient(
        [r.url for r in replicas], batch_size=4, balancer=eb.RoundRobin(), health_check=None
    ) as client:
        rows = await client.embed(texts)
    np.testing.assert_array_equal(rows, expected)
    assert replicas[0].embed_requests >= 1


def _keyerror(response: httpx.Response) -> object:
    return response.json()["data"]  # a TEI answer is a list: TypeError, not ValueError


@pytest.mark.parametrize("attempt_timeout", [None, 5.0], ids=["direct", "raced"])
def test_a_validator_raising_another_error_does_not_leak_the_attempt(
    stubs: Stubs, attempt_timeout: float | None
) -> None:
    """A validator that raises something other than ValueError still ends its attempt: the backend's in-flight count returns to zero (else the backend looks busy forever and never drains after removal)."""
    (stub,) = stubs(1)
    transport = eb.BalancingTransport([stub.url], **quiet(attempt_timeout=attempt_timeout))
    with (
        httpx.Client(transport=transport, base_url="http://tei", timeout=10) as client,
        pytest.raises(TypeError),  # the validator's own error reaches the caller
    ):
        client.post("/embed", json={"inputs": ["a"]}, extensions={eb.VALIDATE_EXTENSION: _keyerror})
    assert transport.stats().pool.in_flight == 0

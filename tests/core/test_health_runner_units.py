"""The health runners' parts that need no server: how a check and a canary are
written, how their answers are read, how the runners survive probes that raise, and
how probes treat a loopback port that refuses or an exchange that never ends.

Why apart from the real-server tests (``tests/transport/test_promises.py``,
``tests/client/test_canary_real.py``): those show the checks work end to end; these
pin each rule exactly (a header, a timeout, a branch of a verdict) in milliseconds,
where a real server would only show that *some* check passed. The probes here are
plain functions, the seam the transports themselves use.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable

import anyio
import anyio.abc
import httpx
import numpy as np
import pytest
from tests.helpers.waiting import wait_until

import embedbalance as eb
from embedbalance.health_runner import (
    CanaryAnswer,
    HealthChecker,
    async_http_canary_probe,
    async_http_info,
    async_http_probe,
    canary_answer,
    canary_request,
    check_request,
    http_canary_probe,
    http_info,
    http_probe,
    run_async_checks,
    speaking_as,
    verdict,
)
from embedbalance.health_runner import _next_interval as next_interval

A = "http://10.0.0.1:8000"
B = "http://10.0.0.2:8000"
POLICY = eb.HealthCheck(timeout=0.7, headers={"Authorization": "Bearer k"})


def _timeouts(request: object) -> dict[str, float]:
    return request.extensions["timeout"]  # type: ignore[attr-defined,no-any-return]


# -- writing a check ---------------------------------------------------------------------


def test_a_check_is_a_get_of_the_policys_path_with_its_headers_and_timeout() -> None:
    """If this fails, checks go to the wrong path, without the API key (401: every replica
    ejected) or without a bound on some phase (a hung connect stalls the round)."""
    request = check_request(eb.Backend(A), POLICY)
    assert request.method == "GET"
    assert str(request.url) == f"{A}/health"
    assert request.headers["Authorization"] == "Bearer k"
    assert _timeouts(request) == {"connect": 0.7, "read": 0.7, "write": 0.7, "pool": 0.7}
    assert "sni_hostname" not in request.extensions
    assert request.headers["Host"] == "10.0.0.1:8000"
    other = check_request(eb.Backend(A + "/prefix"), POLICY, "/info")
    assert str(other.url) == f"{A}/prefix/info"


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://10.0.0.1", "gpu.example"),
        ("https://10.0.0.1:8443", "gpu.example:8443"),
        ("http://10.0.0.1:80", "gpu.example"),
        ("http://10.0.0.1:443", "gpu.example:443"),
    ],
)
def test_a_named_backend_is_checked_under_its_name(url: str, host: str) -> None:
    """A backend reached by address with a certificate name gets that name as SNI and as
    Host (with the port unless it is the scheme's default). If this fails, checks of TLS
    pods fail verification, or a virtual host answers for another site."""
    request = check_request(eb.Backend(url, tls_server_name="gpu.example"), POLICY)
    assert request.extensions["sni_hostname"] == "gpu.example"
    assert request.headers.get_list("Host") == [host]
    assert request.headers["Authorization"] == "Bearer k"


@pytest.mark.parametrize(
    ("api", "path", "backend_model", "sent_path", "body"),
    [
        ("tei", None, None, "/embed", {"inputs": ["x", "y"]}),
        ("tei", "/v2/embed", "m1", "/v2/embed", {"inputs": ["x", "y"]}),
        (
            "openai",
            None,
            None,
            "/v1/embeddings",
            {"input": ["x", "y"], "encoding_format": "float", "model": "canary-model"},
        ),
        (
            "openai",
            None,
            "served",
            "/v1/embeddings",
            {"input": ["x", "y"], "encoding_format": "float", "model": "served"},
        ),
    ],
)
def test_a_canary_is_the_texts_in_the_apis_body_under_the_canarys_timeout(
    api: str, path: str | None, backend_model: str | None, sent_path: str, body: object
) -> None:
    """The canary posts its texts in the API's shape, names the backend's own model where
    it has one (else the canary's), and bounds every phase by the canary's timeout. If
    this fails, a server refusing another model's name never passes its canary."""
    canary = eb.Canary(texts=["x", "y"], api=api, path=path, model="canary-model", timeout=2.5)
    request = canary_request(eb.Backend(A, model=backend_model), POLICY, canary)
    assert request.method == "POST"
    assert str(request.url) == A + sent_path
    assert json.loads(request.content) == body
    assert _timeouts(request) == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}
    assert request.headers["Authorization"] == "Bearer k"


# -- reading answers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "healthy"),
    [
        (200, None, True),
        (204, None, True),
        (299, None, True),
        (199, None, False),
        (300, None, False),
        (503, None, False),
        (200, OSError("refused"), False),
    ],
)
def test_a_verdict_is_2xx_without_error(
    status: int, error: BaseException | None, healthy: bool
) -> None:
    """If this fails, a redirect, a draining 503 or a failed exchange counts as healthy
    (or a 204 as sick)."""
    assert verdict(eb.Backend(A), status, error) is healthy


def test_a_failed_verdict_is_logged_at_debug_with_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """If this fails, operators cannot see why a replica fails its checks."""
    with caplog.at_level(logging.DEBUG, logger="embedbalance.health"):
        verdict(eb.Backend(A), 503)
        verdict(eb.Backend(B), None, OSError("refused"))
    assert f"health check of {A} answered HTTP 503" in [r.getMessage() for r in caplog.records]
    assert f"health check of {B} failed: OSError('refused')" in [
        r.getMessage() for r in caplog.records
    ]


CANARY = eb.Canary(texts=["x", "y"])


@pytest.mark.parametrize(
    ("status", "content", "error", "wrong"),
    [
        (503, b"[[1.0], [2.0]]", "HTTP 503", False),
        (199, b"[[1.0], [2.0]]", "HTTP 199", False),
        (300, b"[[1.0], [2.0]]", "HTTP 300", False),
        (200, b"not json", "invalid JSON: ", True),
        (200, b'{"a": 1}', "answered dict, not a list", True),
        (200, b"[[1.0]]", "1 rows for 2 texts", True),
        (200, b"[[1.0], [2.0], [3.0]]", "3 rows for 2 texts", True),
    ],
)
def test_a_canary_answer_that_is_not_rows_of_the_texts_says_why(
    status: int, content: bytes, error: str, wrong: bool
) -> None:
    """An HTTP error is no answer (the liveness check judges it); garbage, or rows of the
    wrong count, is a wrong answer that votes against the replica. If this fails, a
    replica answering nonsense with 200 is admitted, or an overloaded one is ejected
    as wrong."""
    answer = canary_answer(CANARY, A, status, content)
    assert answer.rows is None
    assert answer.error.startswith(error) or error in answer.error
    assert answer.wrong is wrong


def test_a_good_canary_answer_keeps_the_rows() -> None:
    answer = canary_answer(CANARY, A, 200, b"[[1.0, 0.0], [0.0, 1.0]]")
    assert (answer.error, answer.wrong) == ("", False)
    assert answer.rows is not None
    np.testing.assert_array_equal(answer.rows, np.eye(2, dtype=np.float32))
    assert canary_answer(CANARY, A, 299, b"[[1.0], [2.0]]").rows is not None


def test_the_canary_speaks_the_clients_api_unless_the_user_chose() -> None:
    """The edges of ``speaking_as`` (the OpenAI default case is in test_canary_pool):
    no policy, no canary, an API it does not know, each field the user chose, and TEI
    at another path. If this fails, a canary the user configured is silently rewritten,
    or one sent where the server does not listen never passes."""
    policy = eb.HealthCheck(canary=eb.Canary())
    assert speaking_as(None, "openai", None, None) is None
    plain = eb.HealthCheck()
    assert speaking_as(plain, "openai", None, "m") is plain
    assert speaking_as(policy, "custom", None, "m") is policy
    for chosen in (
        eb.Canary(api="openai"),
        eb.Canary(path="/embed2"),
        eb.Canary(model="mine"),
    ):
        mine = eb.HealthCheck(canary=chosen)
        assert speaking_as(mine, "openai", "/v1/embeddings", "m") is mine
    tei = speaking_as(policy, "tei", "/embed3", None)
    assert tei is not None
    assert tei.canary is not None
    assert (tei.canary.api, tei.canary.path) == ("tei", "/embed3")


def test_intervals_are_jittered_within_the_policys_fraction() -> None:
    """If this fails, every client of a fleet checks in lockstep (no jitter) or outside
    the configured interval."""
    assert next_interval(eb.HealthCheck(interval=2.0, jitter=0.0), random.Random(1)) == 2.0
    policy = eb.HealthCheck(interval=2.0, jitter=0.25)
    rng = random.Random(7)
    seen = [next_interval(policy, rng) for _ in range(400)]
    assert all(1.5 <= s <= 2.5 for s in seen)
    assert min(seen) < 1.55
    assert max(seen) > 2.45
    expected = random.Random(7)
    assert seen[0] == 2.0 * (1.0 + expected.uniform(-0.25, 0.25))


# -- the sync runner with plain-function probes ------------------------------------------


def _pool(urls: list[str], **kwargs: object) -> eb.BackendPool:
    return eb.BackendPool(urls, clock=eb.ManualClock(), **kwargs)  # type: ignore[arg-type]


def test_a_probe_that_raises_is_a_failed_check_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """If this fails, a bug in a probe takes the checker down (no more checks at all) or
    counts the backend healthy."""

    def probe(backend: eb.Backend) -> bool:
        if backend.url == A:
            raise RuntimeError("probe bug")
        return True

    pool = _pool([A, B], health_check=eb.HealthCheck(fall=1))
    checker = HealthChecker(pool, eb.HealthCheck(fall=1), probe=probe)
    with caplog.at_level(logging.ERROR, logger="embedbalance.health"):
        assert checker.check(eb.Backend(A)) is False
        checker.run_round()
    assert f"health probe of {A} raised" in [r.getMessage() for r in caplog.records]
    states = {b.url: b.state for b in pool.stats().backends}
    assert states == {A: "unhealthy", B: "healthy"}


def test_a_canary_probe_that_raises_is_no_answer(caplog: pytest.LogCaptureFixture) -> None:
    def boom(backend: eb.Backend) -> CanaryAnswer:
        raise RuntimeError("canary bug")

    policy = eb.HealthCheck(canary=eb.Canary())
    checker = HealthChecker(_pool([A]), policy, probe=lambda b: True, canary_probe=boom)
    with caplog.at_level(logging.ERROR, "embedbalance.health"):
        answer = checker.canary(eb.Backend(A))
    assert [r.getMessage() for r in caplog.records] == [f"canary probe of {A} raised"]
    assert (answer.rows, answer.wrong) == (None, False)
    assert answer.error == "RuntimeError('canary bug')"


def test_a_round_learns_models_only_where_answered_and_survives_a_raising_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``/info`` is read for healthy backends whose model is unknown; an unanswered read
    is asked again next round, a raising one is logged and skipped. If this fails, a
    replica's model is never learned (requests naming it find no backend) or one bad
    ``/info`` stops the round."""
    calls: list[str] = []
    answered = {A: (False, None), B: (True, "m-b")}

    def info(backend: eb.Backend) -> tuple[bool, str | None]:
        calls.append(backend.url)
        if backend.url == "http://10.0.0.3:8000":
            raise RuntimeError("info bug")
        return answered[backend.url]

    c = "http://10.0.0.3:8000"
    pool = _pool([A, B, c])
    checker = HealthChecker(pool, eb.HealthCheck(), probe=lambda b: True, info=info)
    with caplog.at_level(logging.ERROR, logger="embedbalance.health"):
        checker.run_round()
    assert sorted(calls) == sorted([A, B, c])
    assert f"GET /info of {c} raised" in [r.getMessage() for r in caplog.records]
    assert pool.model_of(eb.Backend(B)) == "m-b"
    assert pool.model_of(eb.Backend(A)) is None
    calls.clear()
    checker.run_round()
    assert sorted(calls) == sorted([A, c])  # B is known; A and c are asked again


def test_an_empty_pool_round_asks_nothing() -> None:
    asked: list[str] = []
    pool = _pool([A])
    pool.update([])
    checker = HealthChecker(pool, eb.HealthCheck(), probe=lambda b: asked.append(b.url) or True)
    checker.run_round()
    assert asked == []


def test_start_is_idempotent_and_stop_leaves_no_thread() -> None:
    """If this fails, a second start() runs two checking threads (double the probes), or
    stop() leaves one behind."""
    rounds = threading.Semaphore(0)

    def probe(backend: eb.Backend) -> bool:
        rounds.release()
        return True

    checker = HealthChecker(_pool([A]), eb.HealthCheck(interval=0.01, jitter=0.0), probe=probe)
    assert not checker.running
    checker.start()
    try:
        assert checker.running
        checker.start()
        assert rounds.acquire(timeout=5)
        names = [t.name for t in threading.enumerate()]
        assert names.count("embedbalance-health") == 1
    finally:
        checker.stop()
    assert not checker.running
    assert "embedbalance-health" not in {t.name for t in threading.enumerate()}
    assert not any(t.name.startswith("embedbalance-check") for t in threading.enumerate())
    checker.stop()  # again: nothing to do


# -- the async runner with plain-function probes -----------------------------------------


async def _started(
    tg: anyio.abc.TaskGroup, pool: eb.BackendPool, policy: eb.HealthCheck, **kwargs: object
) -> None:
    """``run_async_checks`` started in ``tg`` (reported started, as a transport starts it)."""
    await tg.start(
        lambda task_status: run_async_checks(pool, policy, task_status=task_status, **kwargs)  # type: ignore[arg-type]
    )


@pytest.mark.anyio
async def test_the_async_runner_survives_probes_and_info_that_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The async twin of the rules above: a raising probe is a failed check, a raising
    ``/info`` is skipped, a raising canary is no answer; the runner keeps going. If this
    fails, one bug in a probe ends async health checking for good."""
    rounds = 0

    async def probe(backend: eb.Backend) -> bool:
        nonlocal rounds
        if backend.url == A:
            raise RuntimeError("probe bug")
        rounds += 1
        return True

    async def info(backend: eb.Backend) -> tuple[bool, str | None]:
        raise RuntimeError("info bug")

    async def canary(backend: eb.Backend) -> CanaryAnswer:
        raise RuntimeError("canary bug")

    policy = eb.HealthCheck(fall=1, interval=0.01, jitter=0.0, canary=eb.Canary(interval=0.01))
    pool = _pool([A, B], health_check=policy)
    with caplog.at_level(logging.DEBUG, logger="embedbalance.health"):
        async with anyio.create_task_group() as tg:
            await _started(tg, pool, policy, probe=probe, info=info, canary_probe=canary)
            with anyio.fail_after(5):
                while rounds < 3:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert f"health probe of {A} raised" in [r.getMessage() for r in caplog.records]
    assert f"GET /info of {B} raised" in [r.getMessage() for r in caplog.records]
    assert f"canary probe of {B} raised" in [r.getMessage() for r in caplog.records]
    rows = {b.url: b for b in pool.stats().backends}
    assert rows[A].state == "unhealthy"
    assert rows[B].canary is not None
    assert "no answer (RuntimeError('canary bug'))" in rows[B].canary


@pytest.mark.anyio
async def test_the_async_runner_reports_started_at_once_without_a_canary() -> None:
    """If this fails, ``task_group.start`` waits on a first round that may hang on a dead
    backend's timeout."""
    gate = anyio.Event()

    async def probe(backend: eb.Backend) -> bool:
        await gate.wait()
        return True

    pool = _pool([A])
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(2):
            await _started(tg, pool, eb.HealthCheck(), probe=probe)
        assert not gate.is_set()
        tg.cancel_scope.cancel()


# -- probes over sockets that refuse or never answer -------------------------------------


def _refusing_url() -> str:
    """A loopback address with nothing listening (a port bound once, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Hanging(httpx.AsyncBaseTransport):
    """An inner transport whose exchange never ends: a hung server, without a socket."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("maker", [http_canary_probe, async_http_canary_probe])
def test_a_canary_probe_needs_a_canary(maker: object) -> None:
    with pytest.raises(ValueError, match=r"^this health check has no canary$"):
        maker(eb.HealthCheck(), lambda backend: None)  # type: ignore[operator]


def test_probes_of_a_refusing_backend_say_no_answer(caplog: pytest.LogCaptureFixture) -> None:
    """A refused connection is a failed check, an unanswered ``/info`` (asked again
    later) and a canary with no answer, not a wrong one. If this fails, a dead replica's
    canary counts as a disagreement (or a pass), or a refused ``/info`` is taken as
    "this server has no /info" and never asked again."""
    backend = eb.Backend(_refusing_url())
    policy = eb.HealthCheck(timeout=2.0, canary=eb.Canary(timeout=2.0))
    with httpx.HTTPTransport() as inner, caplog.at_level(logging.DEBUG, "embedbalance.health"):
        assert http_probe(policy, lambda b: inner)(backend) is False
        assert http_info(policy, lambda b: inner)(backend) == (False, None)
        answer = http_canary_probe(policy, lambda b: inner)(backend)
    assert (answer.rows, answer.error, answer.wrong) == (None, "ConnectError", False)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"GET /info of {backend.url} failed: ConnectError(") for m in messages)
    assert any(
        m.startswith(f"canary of {backend.url} got no answer: ConnectError(") for m in messages
    )


@pytest.mark.anyio
async def test_async_probes_of_a_refusing_backend_say_no_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = eb.Backend(_refusing_url())
    policy = eb.HealthCheck(timeout=2.0, canary=eb.Canary(timeout=2.0))
    with caplog.at_level(logging.DEBUG, "embedbalance.health"):
        async with httpx.AsyncHTTPTransport() as inner:
            assert await async_http_probe(policy, lambda b: inner)(backend) is False
            assert await async_http_info(policy, lambda b: inner)(backend) == (False, None)
            answer = await async_http_canary_probe(policy, lambda b: inner)(backend)
    assert (answer.rows, answer.error, answer.wrong) == (None, "ConnectError", False)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"GET /info of {backend.url} failed: ConnectError(") for m in messages)


@pytest.mark.anyio
async def test_async_probes_are_bounded_by_their_timeouts_as_a_whole() -> None:
    """A server that accepts and never answers fails the check after the policy's
    timeout, leaves ``/info`` unanswered after it, and gives the canary no answer after
    the canary's. If this fails, one hung replica stalls every async health round."""
    backend = eb.Backend(A)
    policy = eb.HealthCheck(timeout=0.05, canary=eb.Canary(timeout=0.05))
    hung = Hanging()
    with anyio.fail_after(5):
        assert await async_http_probe(policy, lambda b: hung)(backend) is False
        assert await async_http_info(policy, lambda b: hung)(backend) == (False, None)
        answer = await async_http_canary_probe(policy, lambda b: hung)(backend)
    assert (answer.rows, answer.error, answer.wrong) == (None, "TimeoutError", False)


@pytest.mark.anyio
async def test_the_async_runner_spaces_full_canary_rounds_by_its_clock() -> None:
    """Full canary rounds come one canary interval apart on the runner's clock (frozen
    here: after the first round nobody is asked again, however many liveness rounds
    run). If this fails, tests and simulations cannot drive canary timing, and the
    runner's canary cadence follows another clock than the pool's."""
    asked: list[str] = []
    rounds = 0

    async def alive(backend: eb.Backend) -> bool:
        nonlocal rounds
        rounds += 1
        return True

    async def canary(backend: eb.Backend) -> CanaryAnswer:
        asked.append(backend.url)
        return CanaryAnswer(rows=np.eye(2, 3, dtype=np.float32))

    clock = eb.ManualClock()
    policy = eb.HealthCheck(interval=0.01, jitter=0.0, canary=eb.Canary(interval=0.05))
    pool = eb.BackendPool([A, B], health_check=policy, clock=clock)
    async with anyio.create_task_group() as tg:
        await _started(tg, pool, policy, probe=alive, canary_probe=canary, clock=clock)
        with anyio.fail_after(5):
            while rounds < 2 * 20:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert sorted(asked) == [A, B]


def test_the_sync_checker_spaces_full_canary_rounds_by_its_clock() -> None:
    """The sync twin of the test above: with the checker's clock frozen, forty rounds
    over real time well past the canary interval ask each backend's canary once. If
    this fails, the sync checker's canary cadence follows the wall clock, not the one
    it was given."""
    asked: list[str] = []

    def canary(backend: eb.Backend) -> CanaryAnswer:
        asked.append(backend.url)
        return CanaryAnswer(rows=np.eye(2, 3, dtype=np.float32))

    clock = eb.ManualClock()
    policy = eb.HealthCheck(interval=0.01, jitter=0.0, canary=eb.Canary(interval=0.05))
    pool = eb.BackendPool([A, B], health_check=policy, clock=clock)
    checker = HealthChecker(pool, policy, probe=lambda b: True, canary_probe=canary, clock=clock)
    started = time.monotonic()
    for _ in range(40):
        checker.run_round()
        time.sleep(0.005)
    assert time.monotonic() - started > 0.1  # two canary intervals of real time passed
    assert sorted(asked) == [A, B]


class FailingOncePool(eb.BackendPool):
    """A pool whose first ``report_check`` raises: a bug somewhere in a round."""

    failed = False

    def report_check(self, backend: eb.BackendLike, ok: bool) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a bug in the round")
        super().report_check(backend, ok)


@pytest.mark.anyio
async def test_the_async_runner_logs_a_failed_round_and_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """If this fails, one bug in a round ends async health checking silently, or is
    logged without saying what failed."""
    checked: list[str] = []

    async def alive(backend: eb.Backend) -> bool:
        checked.append(backend.url)
        return True

    policy = eb.HealthCheck(interval=0.01, jitter=0.0)
    pool = FailingOncePool([A], health_check=policy, clock=eb.ManualClock())
    with caplog.at_level(logging.ERROR, logger="embedbalance.health"):
        async with anyio.create_task_group() as tg:
            await _started(tg, pool, policy, probe=alive)
            with anyio.fail_after(5):
                while len(checked) < 3:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert [r.getMessage() for r in caplog.records] == ["health check round failed"]


@pytest.mark.anyio
async def test_the_async_runner_learns_the_next_models_after_an_info_that_raised() -> None:
    """A raising ``/info`` of one backend skips that backend only. If this fails, one
    replica's broken ``/info`` leaves every replica after it with an unknown model."""
    learned = anyio.Event()

    async def alive(backend: eb.Backend) -> bool:
        return True

    async def info(backend: eb.Backend) -> tuple[bool, str | None]:
        if backend.url == A:
            raise RuntimeError("info bug")
        learned.set()
        return True, "m-b"

    policy = eb.HealthCheck(interval=0.01, jitter=0.0)
    pool = _pool([A, B], health_check=policy)
    async with anyio.create_task_group() as tg:
        await _started(tg, pool, policy, probe=alive, info=info)
        with anyio.fail_after(5):
            await learned.wait()
        tg.cancel_scope.cancel()
    assert pool.model_of(eb.Backend(B)) == "m-b"


@pytest.mark.anyio
async def test_the_async_runner_sends_a_newcomer_its_canary_between_full_rounds() -> None:
    """A backend that joins between full canary rounds is asked in the next liveness
    round, not at the next full one. If this fails, a scaled-up replica waits a whole
    canary interval (minutes, in production) before it gets traffic."""
    asked: list[str] = []
    c = "http://10.0.0.3:8000"

    async def alive(backend: eb.Backend) -> bool:
        return True

    async def canary(backend: eb.Backend) -> CanaryAnswer:
        asked.append(backend.url)
        return CanaryAnswer(rows=np.eye(2, 3, dtype=np.float32))

    clock = eb.ManualClock()  # frozen: no second full round comes
    policy = eb.HealthCheck(interval=0.01, jitter=0.0, canary=eb.Canary(interval=60.0))
    pool = eb.BackendPool([A, B], health_check=policy, clock=clock)
    async with anyio.create_task_group() as tg:
        await _started(tg, pool, policy, probe=alive, canary_probe=canary, clock=clock)
        assert sorted(asked) == [A, B]
        pool.add(c)
        with anyio.fail_after(5):
            while c not in asked:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert sorted(asked) == [A, B, c]


def test_a_round_checks_at_most_eight_backends_at_once() -> None:
    """The sync checker's round runs its checks on eight threads: enough that a few
    hanging backends do not delay the verdict on the rest, few enough that a pool of
    hundreds does not start hundreds of threads. If this fails, the bound changed."""
    lock = threading.Lock()
    inside = peak = 0
    release = threading.Event()

    def probe(backend: eb.Backend) -> bool:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
        release.wait(0.3)
        with lock:
            inside -= 1
        return True

    urls = [f"http://10.0.1.{i}:8000" for i in range(12)]
    checker = HealthChecker(_pool(urls), eb.HealthCheck(interval=60.0), probe=probe)
    checker.start()
    try:
        assert wait_until(lambda: peak >= 8, 5.0)
        time.sleep(0.1)  # a ninth would have started by now
        assert peak == 8
    finally:
        release.set()
        checker.stop()


def test_a_first_canary_round_that_failed_is_run_again_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a canary, ``start()`` runs the first round itself; if that round fails, the
    thread runs one at once instead of waiting an interval. If this fails, replicas
    wait a whole interval (and get no traffic) after one failed first round."""
    rounds: list[str] = []

    def probe(backend: eb.Backend) -> bool:
        rounds.append(backend.url)
        return True

    def canary(backend: eb.Backend) -> CanaryAnswer:
        return CanaryAnswer(rows=np.eye(2, 3, dtype=np.float32))

    policy = eb.HealthCheck(interval=60.0, canary=eb.Canary())
    pool = FailingOncePool([A], health_check=policy, clock=eb.ManualClock())
    checker = HealthChecker(pool, policy, probe=probe, canary_probe=canary)
    with caplog.at_level(logging.ERROR, logger="embedbalance.health"):
        checker.start()
        try:
            assert wait_until(lambda: len(rounds) >= 2, 5.0)
            assert len(rounds) == 2
        finally:
            checker.stop()
    assert [r.getMessage() for r in caplog.records] == ["health check round failed"]


def _counting_probe() -> tuple[list[float], Callable[[eb.Backend], bool]]:
    rounds: list[float] = []

    def probe(backend: eb.Backend) -> bool:
        rounds.append(time.monotonic())
        return True

    return rounds, probe


def _ok_canary(backend: eb.Backend) -> CanaryAnswer:
    return CanaryAnswer(rows=np.eye(2, 3, dtype=np.float32))


def test_after_a_first_canary_round_the_thread_waits_an_interval() -> None:
    """``start()`` ran the first round itself, so the thread's first round comes an
    interval later, not at once; then rounds go on, one per interval (jittered). If
    this fails, every start checks twice in a row, or the thread never checks again."""
    rounds, probe = _counting_probe()
    policy = eb.HealthCheck(interval=0.3, jitter=0.1, canary=eb.Canary())
    pool = eb.BackendPool([A], health_check=policy, clock=eb.ManualClock())
    checker = HealthChecker(pool, policy, probe=probe, canary_probe=_ok_canary)
    started = time.monotonic()
    checker.start()
    try:
        assert len(rounds) == 1  # the first round, run by start()
        assert wait_until(lambda: len(rounds) >= 3, 5.0)
        assert len(rounds) == 3
        assert rounds[1] - started >= 0.25  # an interval (less its jitter) after start
    finally:
        checker.stop()


def test_a_round_that_fails_in_the_thread_is_logged_and_the_next_one_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """If this fails, one bug in a round ends sync health checking silently."""
    rounds, probe = _counting_probe()
    policy = eb.HealthCheck(interval=0.02)
    pool = FailingOncePool([A], health_check=policy, clock=eb.ManualClock())
    checker = HealthChecker(pool, policy, probe=probe)
    with caplog.at_level(logging.ERROR, logger="embedbalance.health"):
        checker.start()
        try:
            assert wait_until(lambda: len(rounds) >= 3, 5.0)
            assert len(rounds) >= 3
        finally:
            checker.stop()
    assert [r.getMessage() for r in caplog.records] == ["health check round failed"]


def test_sync_rounds_follow_the_checkers_clock_and_ask_newcomers_at_once() -> None:
    """The sync twin of the canary cadence: full canary rounds one canary interval apart
    on the checker's clock (frozen here: asked once), and a backend that joins between
    them asked in the next round. If this fails, the canary cadence follows another
    clock than the pool's, or a scaled-up replica waits a whole interval for traffic."""
    asked: list[str] = []
    c = "http://10.0.0.3:8000"

    def canary(backend: eb.Backend) -> CanaryAnswer:
        asked.append(backend.url)
        return _ok_canary(backend)

    clock = eb.ManualClock()
    policy = eb.HealthCheck(canary=eb.Canary(interval=0.01))
    pool = eb.BackendPool([A, B], health_check=policy, clock=clock)
    checker = HealthChecker(pool, policy, probe=lambda b: True, canary_probe=canary, clock=clock)
    checker.run_round()
    time.sleep(0.05)  # five canary intervals of wall time; the checker's clock stands still
    checker.run_round()
    assert sorted(asked) == [A, B]
    pool.add(c)
    checker.run_round()
    assert sorted(asked) == [A, B, c]

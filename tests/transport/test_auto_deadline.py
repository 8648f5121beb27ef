"""attempt_timeout="auto": a hung backend costs a multiple of the pool's tail, not the
caller's whole timeout — judged by what the attempts record, not by a stopwatch."""

from __future__ import annotations

import re

import httpx
import pytest

import embedbalance as eb


def _warm(client: httpx.Client | None, n: int = 40) -> None:
    assert client is not None
    for _ in range(n):
        assert client.post("/embed", json={"inputs": ["a"]}).status_code == 200


def test_auto_deadline_abandons_a_hung_backend_after_a_multiple_of_the_pools_p99(servers):
    """Once the pool has latencies, an attempt on a backend that never answers is
    abandoned after a few times the measured p99 (well under a second here) and answered
    elsewhere; the hung backend is charged a failure for it."""
    good = servers(2)
    hung = servers(1, mode="hang")[0]
    transport = eb.BalancingTransport(
        [s.url for s in good],
        health_check=None,
        balancer=eb.RoundRobin,
        attempt_timeout="auto",
        hedge=None,  # the deadline alone, not a hedge, must rescue the request
        outlier_detection=None,
        slow_start=None,  # the hung backend, added below, takes its full turns at once
    )
    with httpx.Client(transport=transport, base_url="http://e", timeout=30) as client:
        _warm(client)
        transport.pool.add(hung.url)
        deadlines = []
        for _ in range(12):
            response = client.post("/embed", json={"inputs": ["a"]})
            assert response.status_code == 200
            for attempt in response.extensions.get(eb.ATTEMPTS_EXTENSION, ()):
                assert attempt.url == hung.url
                assert "timed out" in attempt.error  # ours, or httpx's phase cap just before
                match = re.search(r"timed out after ([0-9.e-]+)s", attempt.error)
                deadlines.append(float(match.group(1)) if match else None)
        stats = transport.stats().pool.by_url()
    assert deadlines, "the hung backend was tried"
    tail = max(stats[s.url].latency_high or 0.0 for s in good)
    for deadline in filter(None, deadlines):
        # a multiple of the measured tail (with its 0.1 s floor), not the caller's 30 s
        assert deadline <= max(0.1, 4 * tail) * 1.5 + 0.05
    assert stats[hung.url].failures == len(deadlines)
    transport.close()


def test_auto_deadline_with_nothing_measured_falls_back_to_the_total_timeout(servers):
    """Before any answer there is no tail to go by: the attempt gets the request's
    remaining total timeout, so nothing is abandoned on a guess."""
    hung = servers(1, mode="hang")[0]
    transport = eb.BalancingTransport(
        [hung.url], health_check=None, attempt_timeout="auto", total_timeout=0.5
    )
    with (
        httpx.Client(transport=transport, base_url="http://e", timeout=30) as client,
        pytest.raises(eb.DeadlineExceeded) as info,
    ):
        client.post("/embed", json={"inputs": ["a"]})
    assert "timed out after 0.5s" in info.value.attempts[0].error
    transport.close()


def test_auto_is_the_only_word_accepted():
    """A misspelt attempt_timeout is refused at construction with the allowed values."""
    with pytest.raises(ValueError, match='"auto"'):
        eb.BalancingTransport(["http://127.0.0.1:9"], health_check=None, attempt_timeout="fast")  # type: ignore[arg-type]

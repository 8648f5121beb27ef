"""Canary checks in a pool that serves several models (no I/O, manual clock).

Replicas of two models never give the same vectors, so a canary vote over all of them
would eject the model with fewer replicas; these pin that answers are compared within
a model only, that a reference judges only its own model, that each replica is asked
in its own model's name, and that a round reads ``/info`` before it sends the canary.
"""

from __future__ import annotations

import json

import anyio
import httpx
import numpy as np
import pytest

import embedbalance as eb
from embedbalance.health_runner import (
    CanaryAnswer,
    CanaryRounds,
    HealthChecker,
    canary_request,
    run_async_checks,
)

A_URLS = ["http://a0:1", "http://a1:1", "http://a2:1"]
B_URLS = ["http://b0:1", "http://b1:1"]
A_ROWS = np.eye(2, 384, dtype=np.float32)
B_ROWS = np.eye(2, 768, k=5, dtype=np.float32)
CANARY = eb.Canary(texts=["x", "y"], interval=10.0)


def _backends(given: bool = True) -> list[eb.Backend]:
    return [eb.Backend(u, model="org/A" if given else None) for u in A_URLS] + [
        eb.Backend(u, model="B" if given else None) for u in B_URLS
    ]


def _answers() -> dict[str, CanaryAnswer]:
    answers = {u: CanaryAnswer(rows=A_ROWS) for u in A_URLS}
    answers.update({u: CanaryAnswer(rows=B_ROWS) for u in B_URLS})
    return answers


def _settle(pool: eb.BackendPool, canary: eb.Canary = CANARY) -> None:
    awaiting = {b.url for b in pool.awaiting_canary()}
    CanaryRounds(canary).settle(pool, pool.backends, _answers(), awaiting)


def test_each_model_is_judged_among_its_own_replicas() -> None:
    """Three replicas of A and two of B (other dimensions) all pass, and a request for
    B finds a backend. If this fails, canary checks eject every replica of the model
    with fewer replicas and its requests get NoBackendAvailable."""
    pool = eb.BackendPool(_backends(), health_check=eb.HealthCheck(canary=CANARY))
    _settle(pool)
    assert {r.url: r.state for r in pool.stats().backends} == dict.fromkeys(
        A_URLS + B_URLS, "healthy"
    )
    pool.release(pool.acquire(model="B"))
    pool.release(pool.acquire(model="A"))


def test_a_wrong_replica_is_still_caught_within_its_model() -> None:
    """Within one model the majority still rules: a third B replica answering other
    vectors is ejected by the two B replicas that agree. If this fails, grouping by
    model blinds the canary to a wrong replica."""
    backends = [*_backends(), eb.Backend("http://b2:1", model="B")]
    pool = eb.BackendPool(backends, health_check=eb.HealthCheck(canary=CANARY))
    answers = _answers()
    answers["http://b2:1"] = CanaryAnswer(rows=np.eye(2, 768, k=100, dtype=np.float32))
    awaiting = {b.url for b in pool.awaiting_canary()}
    CanaryRounds(CANARY).settle(pool, pool.backends, answers, awaiting)
    rows = pool.stats().by_url()
    assert rows["http://b2:1"].state == "ejected"
    assert "vs majority of 2" in (rows["http://b2:1"].canary or "")
    assert {rows[u].state for u in A_URLS + B_URLS} == {"healthy"}


def test_learned_models_group_and_short_names_join_full_ones() -> None:
    """Models learned from ``/info`` group like given ones, and ``A`` groups with
    ``org/A``. If this fails, a pool whose models come from ``/info`` ejects its smaller
    model, or one model spelled two ways is split and loses its majority."""
    pool = eb.BackendPool(_backends(given=False), health_check=eb.HealthCheck(canary=CANARY))
    for url, model in zip(A_URLS, ["org/A", "A", "org/A"], strict=True):
        pool.learn_model(url, model)
    for url in B_URLS:
        pool.learn_model(url, "B")
    answers = _answers()
    answers[A_URLS[1]] = CanaryAnswer(rows=np.eye(2, 384, k=50, dtype=np.float32))
    awaiting = {b.url for b in pool.awaiting_canary()}
    CanaryRounds(CANARY).settle(pool, pool.backends, answers, awaiting)
    rows = pool.stats().by_url()
    assert rows[A_URLS[1]].state == "ejected"  # outvoted by the two org/A replicas
    assert {rows[u].state for u in [A_URLS[0], A_URLS[2], *B_URLS]} == {"healthy"}


def test_a_reference_judges_only_its_own_model() -> None:
    """A reference for model A (the canary's model) ejects a wrong A replica but says
    nothing of B's replicas, which the B majority judges. If this fails, a reference
    ejects every replica of every other model."""
    canary = eb.Canary(texts=["x", "y"], reference=A_ROWS.tolist(), model="A")
    pool = eb.BackendPool(_backends(), health_check=eb.HealthCheck(canary=canary))
    answers = _answers()
    answers[A_URLS[0]] = CanaryAnswer(rows=np.eye(2, 384, k=50, dtype=np.float32))
    awaiting = {b.url for b in pool.awaiting_canary()}
    CanaryRounds(canary).settle(pool, pool.backends, answers, awaiting)
    rows = pool.stats().by_url()
    assert rows[A_URLS[0]].state == "ejected"
    assert "vs reference" in (rows[A_URLS[0]].canary or "")
    assert "vs majority of 2" in (rows[B_URLS[0]].canary or "")
    assert {rows[u].state for u in [*A_URLS[1:], *B_URLS]} == {"healthy"}


def test_one_model_keeps_one_vote_and_the_reference_for_all() -> None:
    """A pool of one model (or of unknown models) is one group, judged by the reference
    whatever the canary's model is called. If this fails, single-model pools lose their
    reference or their majority."""
    canary = eb.Canary(texts=["x", "y"], reference=A_ROWS.tolist())
    pool = eb.BackendPool(A_URLS, health_check=eb.HealthCheck(canary=canary))
    answers = {u: CanaryAnswer(rows=A_ROWS) for u in A_URLS[:2]}
    answers[A_URLS[2]] = CanaryAnswer(rows=np.eye(2, 384, k=50, dtype=np.float32))
    CanaryRounds(canary).settle(pool, pool.backends, answers, set(A_URLS))
    rows = pool.stats().by_url()
    assert rows[A_URLS[2]].state == "ejected"
    assert "vs reference" in (rows[A_URLS[2]].canary or "")


def test_an_unread_model_waits_in_a_pool_of_several() -> None:
    """In a pool of several models, a replica whose ``/info`` has not answered yet is
    neither judged nor admitted: it stays pending until its model is known. If this
    fails, it is ejected by the other model's majority, or admitted unchecked."""
    backends = [*_backends(), eb.Backend("http://new:1")]
    pool = eb.BackendPool(backends, health_check=eb.HealthCheck(canary=CANARY))
    answers = _answers()
    answers["http://new:1"] = CanaryAnswer(rows=B_ROWS)
    rounds = CanaryRounds(CANARY)
    awaiting = {b.url for b in pool.awaiting_canary()}
    rounds.settle(pool, pool.backends, answers, awaiting)
    row = pool.stats().by_url()["http://new:1"]
    assert (row.state, row.canary) == ("pending", "canary: pending, model not known yet")
    pool.learn_model("http://new:1", "B")
    rounds.settle(
        pool, pool.backends, {"http://new:1": CanaryAnswer(rows=B_ROWS)}, {"http://new:1"}
    )
    assert pool.stats().by_url()["http://new:1"].state == "healthy"


def test_the_openai_canary_asks_each_replica_for_its_own_model() -> None:
    """With ``api="openai"``, the canary request names the model the pool knows the
    replica serves (given or learned), else the canary's. If this fails, a server that
    refuses unknown model names answers 4xx and its replicas stay pending forever."""
    canary = eb.Canary(texts=["x"], api="openai", model="A")
    policy = eb.HealthCheck(canary=canary)
    asked: dict[str, str | None] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        asked[str(request.url.host)] = json.loads(request.content).get("model")
        return httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0, 0.0]}]})

    pool = eb.BackendPool(
        [eb.Backend("http://a0:1", model="A"), eb.Backend("http://b0:1"), "http://c0:1"],
        health_check=policy,
    )
    learned = {"http://b0:1": "B"}
    checker = HealthChecker(
        pool,
        policy,
        probe=lambda b: True,
        info=lambda b: (True, learned.get(b.url)),
        transport=httpx.MockTransport(answer),
    )
    checker.run_round()
    assert asked == {"a0": "A", "b0": "B", "c0": "A"}


def test_the_request_body_names_the_backends_model() -> None:
    """``canary_request`` names a backend's own model when it has one. If this fails,
    replicas of another model get the canary's model name."""
    policy = eb.HealthCheck(canary=eb.Canary(api="openai", model="A"))
    assert policy.canary is not None
    own = canary_request(eb.Backend("http://b:1", model="B"), policy, policy.canary)
    other = canary_request(eb.Backend("http://c:1"), policy, policy.canary)
    assert json.loads(own.content)["model"] == "B"
    assert json.loads(other.content)["model"] == "A"


def _order_fixture() -> tuple[eb.BackendPool, eb.HealthCheck, list[str]]:
    policy = eb.HealthCheck(canary=CANARY)
    pool = eb.BackendPool(_backends(given=False), health_check=policy)
    return pool, policy, []


def test_the_sync_round_reads_info_before_the_canary() -> None:
    """In one round, every replica's ``/info`` is read before any canary is judged, so
    the first verdicts already know the models: both B replicas are admitted in the
    first round. If this fails, the first round (run before ``start`` returns) judges
    all replicas as one model and ejects the smaller one."""
    pool, policy, log = _order_fixture()

    def info(backend: eb.Backend) -> tuple[bool, str | None]:
        log.append("info " + backend.url)
        return True, "A" if backend.url in A_URLS else "B"

    def canary(backend: eb.Backend) -> CanaryAnswer:
        log.append("canary " + backend.url)
        return _answers()[backend.url]

    checker = HealthChecker(pool, policy, probe=lambda b: True, canary_probe=canary, info=info)
    checker.run_round()
    last_info = max(i for i, e in enumerate(log) if e.startswith("info"))
    first_canary = min(i for i, e in enumerate(log) if e.startswith("canary"))
    assert last_info < first_canary
    assert {r.state for r in pool.stats().backends} == {"healthy"}


@pytest.mark.anyio
async def test_the_async_round_reads_info_before_the_canary() -> None:
    """The async twin: ``/info`` first, then the canary, so the first round admits both
    models. If this fails, async clients eject the smaller model at start."""
    pool, policy, log = _order_fixture()

    async def probe(backend: eb.Backend) -> bool:
        return True

    async def info(backend: eb.Backend) -> tuple[bool, str | None]:
        log.append("info " + backend.url)
        return True, "A" if backend.url in A_URLS else "B"

    async def canary(backend: eb.Backend) -> CanaryAnswer:
        log.append("canary " + backend.url)
        return _answers()[backend.url]

    async with anyio.create_task_group() as tg:
        await tg.start(
            lambda task_status: run_async_checks(
                pool, policy, probe=probe, canary_probe=canary, info=info, task_status=task_status
            )
        )
        tg.cancel_scope.cancel()
    last_info = max(i for i, e in enumerate(log) if e.startswith("info"))
    first_canary = min(i for i, e in enumerate(log) if e.startswith("canary"))
    assert last_info < first_canary
    assert {r.state for r in pool.stats().backends} == {"healthy"}

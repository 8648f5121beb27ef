"""What the pool and the check rounds do with canary verdicts (no I/O, manual clock).

The probes here are plain functions returning answers, as the transports' probes do
after the HTTP exchange; the exchange itself is pinned against real workers in
``tests/transport/test_canary_real.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import embedbalance as eb
from embedbalance.health_runner import CanaryAnswer, CanaryRounds, HealthChecker, speaking_as

URLS = ["http://a:1", "http://b:1", "http://c:1"]
CANARY = eb.Canary(texts=["x", "y"], interval=10.0)
RIGHT = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
WRONG = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=np.float32)


def _pool(urls: list[str] = URLS, **kwargs: object) -> eb.BackendPool:
    return eb.BackendPool(
        urls,
        health_check=eb.HealthCheck(canary=CANARY),
        clock=eb.ManualClock(),
        **kwargs,  # type: ignore[arg-type]
    )


def test_no_traffic_before_the_first_canary_passes() -> None:
    """With the canary on, a backend is not picked before a canary passes, and the
    error and stats say why. If this fails, a replica with the wrong model serves
    requests in the seconds before it is first checked."""
    pool = _pool(URLS[:1])
    with pytest.raises(eb.NoBackendAvailable, match="canary: pending"):
        pool.acquire()
    assert pool.stats().backends[0].state == "pending"
    assert pool.gauges() == [(URLS[0], 0, False)]
    pool.report_canary(URLS[0], True, "canary: a lone replica, no verdict")
    lease = pool.acquire()
    pool.release(lease)
    row = pool.stats().backends[0]
    assert (row.state, row.canary) == ("healthy", "canary: a lone replica, no verdict")


def test_a_disagreeing_backend_is_ejected_with_the_reason_then_readmitted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A False verdict ejects (stats, event, log and error carry the reason naming the
    check); a later True re-admits. If this fails, users cannot tell why a replica
    gets no traffic, or it never comes back after a fix."""
    pool = _pool()
    events: list[eb.PoolEvent] = []
    pool.add_listener(events.append)
    for url in URLS:
        pool.report_canary(url, True, "canary: ok")
    reason = "canary: cosine 0.120 < 0.99 vs majority of 2"
    with caplog.at_level(logging.WARNING, logger="embedbalance"):
        pool.report_canary(URLS[2], False, reason)
    assert any(reason in r.getMessage() for r in caplog.records)
    assert [(e.kind, e.url, e.detail) for e in events[-1:]] == [("ejected", URLS[2], reason)]
    row = pool.stats().by_url()[URLS[2]]
    assert (row.state, row.canary, row.ejections) == ("ejected", reason, 1)
    picked = set()
    for _ in range(50):
        lease = pool.acquire()
        picked.add(lease.backend.url)
        pool.release(lease)
    assert picked == set(URLS[:2])
    with pytest.raises(eb.NoBackendAvailable) as info:
        pool.acquire(exclude=URLS[:2])
    assert reason in str(info.value)
    pool.report_canary(URLS[2], None, "canary: no answer (ConnectError)")
    assert pool.stats().by_url()[URLS[2]].canary == reason  # no answer keeps the reason
    pool.report_canary(URLS[2], True, "canary: cosine 1.000 >= 0.99 vs majority of 3")
    assert events[-1].kind == "readmitted"
    assert pool.stats().by_url()[URLS[2]].state == "healthy"


def test_panic_mode_never_serves_a_replica_the_canary_rejected() -> None:
    """When most replicas fail their health checks the pool panics and balances over
    all of them — but only over those whose canary passed; none when none pass. If this
    fails, panic mode hands out wrong vectors."""
    pool = eb.BackendPool(
        [*URLS, "http://d:1"],
        health_check=eb.HealthCheck(canary=CANARY, fall=1),
        clock=eb.ManualClock(),
    )
    pool.report_canary(URLS[0], True, "ok")
    pool.report_canary(URLS[1], True, "ok")
    pool.report_canary(URLS[2], False, "canary: wrong")  # d stays pending
    pool.report_check(URLS[0], False)
    pool.report_check(URLS[1], False)
    assert pool.stats().panic
    picked = set()
    for _ in range(40):
        lease = pool.acquire()
        picked.add(lease.backend.url)
        pool.release(lease)
    assert picked == set(URLS[:2])
    pool.report_canary(URLS[0], False, "canary: wrong too")
    pool.report_canary(URLS[1], False, "canary: wrong too")
    with pytest.raises(eb.NoBackendAvailable, match="canary: wrong"):
        pool.acquire()


def test_a_backend_that_rejoins_must_pass_again() -> None:
    """A backend removed and added back (a restarted pod) is pending again. If this
    fails, a replica that came back with other weights is trusted on its old verdict."""
    pool = _pool(URLS[:2])
    for url in URLS[:2]:
        pool.report_canary(url, True, "ok")
    lease = pool.acquire(exclude=[URLS[0]])
    pool.remove(URLS[1])  # still draining: its state is reused when it comes back
    pool.add(URLS[1])
    pool.release(lease)
    assert [b.url for b in pool.awaiting_canary()] == [URLS[1]]
    assert pool.stats().by_url()[URLS[1]].state == "pending"


def test_rounds_ask_everyone_per_interval_and_newcomers_every_round() -> None:
    """A full canary round comes once per interval; between them only backends awaiting
    their first canary are asked. If this fails, the canary either floods replicas or
    keeps newcomers waiting a whole interval."""
    clock = eb.ManualClock()
    rounds = CanaryRounds(CANARY, clock=clock)
    backends = [eb.Backend(u) for u in URLS]
    assert rounds.targets(backends, []) == set(URLS)
    clock.advance(5.0)
    assert rounds.targets(backends, backends[2:]) == {URLS[2]}
    clock.advance(5.0)
    assert rounds.targets(backends, []) == set(URLS)


def test_a_newcomer_is_judged_against_the_others_latest_answers() -> None:
    """A backend asked alone is compared with the others' last answers: a wrong one is
    ejected at once, a right one admitted. If this fails, a newcomer waits for the
    next full round, or is admitted unchecked."""
    pool = _pool([*URLS, "http://d:1", "http://e:1"])
    rounds = CanaryRounds(CANARY)
    backends = pool.backends
    awaiting = {b.url for b in pool.awaiting_canary()}
    answers = {u: CanaryAnswer(rows=RIGHT) for u in URLS}
    rounds.settle(pool, backends, answers, awaiting)
    assert {b.url for b in pool.awaiting_canary()} == {"http://d:1", "http://e:1"}
    rounds.settle(pool, backends, {"http://d:1": CanaryAnswer(rows=WRONG)}, awaiting)
    rounds.settle(pool, backends, {"http://e:1": CanaryAnswer(rows=RIGHT * 2)}, awaiting)
    rows = pool.stats().by_url()
    assert rows["http://d:1"].state == "ejected"
    assert "vs majority of 3" in (rows["http://d:1"].canary or "")
    assert rows["http://e:1"].state == "healthy"


def test_answers_that_are_not_embeddings_eject_and_silence_waits() -> None:
    """A malformed answer (wrong rows) is a disagreement; no answer at all leaves a
    pending backend pending with the reason shown. If this fails, garbage passes the
    canary or a slow replica is called wrong."""
    pool = _pool(URLS[:2])
    rounds = CanaryRounds(CANARY)
    awaiting = {b.url for b in pool.awaiting_canary()}
    rounds.settle(
        pool,
        pool.backends,
        {
            URLS[0]: CanaryAnswer(error="1 rows for 2 texts", wrong=True),
            URLS[1]: CanaryAnswer(error="ReadTimeout"),
        },
        awaiting,
    )
    rows = pool.stats().by_url()
    assert (rows[URLS[0]].state, rows[URLS[0]].canary) == (
        "ejected",
        "canary: wrong answer (1 rows for 2 texts)",
    )
    assert (rows[URLS[1]].state, rows[URLS[1]].canary) == (
        "pending",
        "canary: pending, no answer (ReadTimeout)",
    )


def test_the_sync_checker_sends_canaries_only_after_a_passed_check() -> None:
    """A round checks liveness, then sends the canary to live backends only, and the
    verdicts reach the pool. If this fails, dead replicas are canaried (timeouts
    doubling a round's length) or verdicts are lost."""
    policy = eb.HealthCheck(canary=CANARY, fall=1)
    pool = eb.BackendPool(URLS, health_check=policy, clock=eb.ManualClock())
    asked: list[str] = []

    def probe(backend: eb.Backend) -> bool:
        return backend.url != URLS[1]

    def canary(backend: eb.Backend) -> CanaryAnswer:
        asked.append(backend.url)
        return CanaryAnswer(rows=WRONG if backend.url == URLS[2] else RIGHT)

    checker = HealthChecker(pool, policy, probe=probe, canary_probe=canary)
    checker.run_round()
    assert sorted(asked) == [URLS[0], URLS[2]]
    rows = pool.stats().by_url()
    # A lone right answer against a lone wrong one: a tie, so both are admitted.
    assert rows[URLS[0]].state == "healthy"
    assert rows[URLS[1]].state == "unhealthy"
    assert rows[URLS[2]].state == "healthy"


def test_canary_ejections_show_in_the_metrics() -> None:
    """A canary ejection counts in ``embedbalance_ejections_total`` and the backend's
    ``embedbalance_backend_healthy`` reads 0 (1 again once it agrees). If this fails,
    dashboards show a wrong replica as healthy."""
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    pool = _pool(URLS[:2])
    eb.PrometheusMetrics(registry).bind(pool)
    pool.report_canary(URLS[0], True, "ok")
    pool.report_canary(URLS[1], False, "canary: wrong")

    def sample(name: str, url: str) -> float | None:
        return registry.get_sample_value(name, {"backend": url})

    assert sample("embedbalance_ejections_total", URLS[1]) == 1.0
    assert sample("embedbalance_backend_healthy", URLS[1]) == 0.0
    assert sample("embedbalance_backend_healthy", URLS[0]) == 1.0
    pool.report_canary(URLS[1], True, "canary: agrees")
    assert sample("embedbalance_backend_healthy", URLS[1]) == 1.0


def test_a_default_canary_asks_as_the_client_does() -> None:
    """A canary left at its defaults takes the client's API, path and model; one the
    user set is kept. If this fails, a client of an OpenAI-only server gets a canary
    that can never pass (every replica stays pending)."""
    policy = eb.HealthCheck(canary=True)
    spoken = speaking_as(policy, "openai", "/v1/embeddings", "m")
    assert spoken is not None
    assert spoken.canary is not None
    assert (spoken.canary.api, spoken.canary.path, spoken.canary.model) == (
        "openai",
        "/v1/embeddings",
        "m",
    )
    chosen = eb.HealthCheck(canary=eb.Canary(api="tei", path="/embed"))
    assert speaking_as(chosen, "openai", "/v1/embeddings", "m") is chosen
    assert speaking_as(None, "openai", None, None) is None
    assert speaking_as(eb.HealthCheck(), "openai", None, None) == eb.HealthCheck()


def test_a_comeback_must_pass_its_canary_again() -> None:
    """A replica that failed its health checks and passes them again is pending until a
    new canary passes. If this fails, a new pod at the same address (other weights,
    another model) is trusted on the old pod's canary."""
    policy = eb.HealthCheck(canary=CANARY, fall=1, rise=1)
    pool = eb.BackendPool(URLS, health_check=policy, clock=eb.ManualClock())
    for url in URLS:
        pool.report_check(url, True)
        pool.report_canary(url, True, "canary: ok")
    pool.report_check(URLS[2], False)
    pool.report_check(URLS[2], True)
    row = pool.stats().by_url()[URLS[2]]
    assert (row.state, row.canary) == ("pending", "canary: pending")
    assert [b.url for b in pool.awaiting_canary()] == [URLS[2]]


def test_a_changed_model_must_pass_its_canary_again() -> None:
    """When ``/info`` reports another model than before, the canary verdict is void;
    a first model learned for a replica the canary ejected gives it a new chance. If
    this fails, a replica now serving another model keeps its old verdict."""
    pool = _pool()
    for url in URLS:
        pool.learn_model(url, "A")
        pool.report_canary(url, True, "canary: ok")
    pool.learn_model(URLS[0], "A")
    assert pool.stats().by_url()[URLS[0]].state == "healthy"  # same model: kept
    pool.learn_model(URLS[0], "B")
    assert pool.stats().by_url()[URLS[0]].state == "pending"
    fresh = _pool(["http://d:1"])
    fresh.report_canary("http://d:1", False, "canary: wrong")
    fresh.learn_model("http://d:1", "B")
    assert fresh.stats().by_url()["http://d:1"].state == "pending"


def test_a_pending_replicas_old_answer_no_longer_votes() -> None:
    """Once a replica is pending again (a comeback), its answer from before does not
    vote on others. If this fails, a replaced pod's old vectors keep outvoting."""
    policy = eb.HealthCheck(canary=CANARY, fall=1, rise=1)
    pool = eb.BackendPool([*URLS, "http://d:1"], health_check=policy, clock=eb.ManualClock())
    rounds = CanaryRounds(CANARY)
    answers = {u: CanaryAnswer(rows=RIGHT) for u in URLS}
    rounds.settle(pool, pool.backends, answers, set(URLS))
    pool.report_check(URLS[2], False)
    pool.report_check(URLS[2], True)
    rounds.settle(
        pool,
        pool.backends,
        {"http://d:1": CanaryAnswer(rows=WRONG), URLS[2]: CanaryAnswer(error="ReadTimeout")},
        {URLS[2], "http://d:1"},
    )
    assert URLS[2] not in rounds.latest
    assert "vs majority of 2" in (pool.stats().by_url()["http://d:1"].canary or "")


def test_a_member_without_an_answer_keeps_its_state_and_the_round_goes_on() -> None:
    """A healthy member whose canary gets no answer keeps its state and its last
    verdict's reason; answers after it in the same round are still judged. If this
    fails, one silent replica stops the round's verdicts on the others."""
    pool = _pool(URLS)
    rounds = CanaryRounds(CANARY)
    rounds.settle(pool, pool.backends, {u: CanaryAnswer(rows=RIGHT) for u in URLS}, set(URLS))
    answers = {
        URLS[0]: CanaryAnswer(error="ReadTimeout"),
        URLS[1]: CanaryAnswer(rows=RIGHT),
        URLS[2]: CanaryAnswer(rows=WRONG),
    }
    rounds.settle(pool, pool.backends, answers, set())
    rows = pool.stats().by_url()
    assert (rows[URLS[0]].state, rows[URLS[0]].canary) == (
        "healthy",
        "canary: cosine 1.000 >= 0.99 vs majority of 3",
    )
    assert rows[URLS[2]].state == "ejected"


def test_a_round_goes_on_past_a_member_whose_model_is_not_known() -> None:
    """In a pool of several models, a member whose model is unknown gets no verdict; the
    members answering after it in the same round still do."""
    policy = eb.HealthCheck(canary=CANARY)
    pool = eb.BackendPool(
        [eb.Backend(URLS[0]), eb.Backend(URLS[1], model="m"), eb.Backend(URLS[2], model="n")],
        health_check=policy,
        clock=eb.ManualClock(),
    )
    rounds = CanaryRounds(CANARY)
    awaiting = {b.url for b in pool.awaiting_canary()}
    answers = {URLS[0]: CanaryAnswer(rows=RIGHT), URLS[1]: CanaryAnswer(rows=RIGHT)}
    rounds.settle(pool, pool.backends, answers, awaiting)
    rows = pool.stats().by_url()
    assert (rows[URLS[0]].state, rows[URLS[0]].canary) == (
        "pending",
        "canary: pending, model not known yet",
    )
    assert rows[URLS[1]].state == "healthy"  # a lone replica of its model: admitted


def test_a_garbage_answer_withdraws_the_members_earlier_vote() -> None:
    """A member that answers garbage no longer votes with its earlier good rows. If this
    fails, a replica that turned broken keeps outvoting healthy ones (here it would make
    a 2-to-1 majority against the member that disagrees; without it, a tie ejects no one)."""
    pool = _pool(URLS)
    rounds = CanaryRounds(CANARY)
    rounds.settle(pool, pool.backends, {u: CanaryAnswer(rows=RIGHT) for u in URLS}, set(URLS))
    answers = {
        URLS[0]: CanaryAnswer(error="invalid JSON", wrong=True),
        URLS[1]: CanaryAnswer(rows=WRONG),
        URLS[2]: CanaryAnswer(rows=RIGHT),
    }
    rounds.settle(pool, pool.backends, answers, set())
    assert URLS[0] not in rounds.latest
    rows = pool.stats().by_url()
    assert rows[URLS[0]].state == "ejected"
    assert rows[URLS[1]].state == "healthy"


def test_an_answer_from_a_backend_that_left_during_the_round_is_ignored() -> None:
    """A canary answer from a backend removed while its round ran gets no verdict, and
    the members answering after it still do. If this fails, a scale-down during a
    round leaves the remaining replicas unjudged (a new one stays pending)."""
    pool = _pool(URLS)
    rounds = CanaryRounds(CANARY)
    awaiting = {b.url for b in pool.awaiting_canary()}
    answers = {"http://gone:1": CanaryAnswer(rows=RIGHT)}
    answers.update({u: CanaryAnswer(rows=RIGHT) for u in URLS})
    rounds.settle(pool, pool.backends, answers, awaiting)
    assert {b.state for b in pool.stats().backends} == {"healthy"}
    assert "http://gone:1" not in pool.stats().by_url()

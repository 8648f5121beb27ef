"""/health reports the ability to embed: a dead, stuck or failing batcher turns it 503,
and the batcher loop outlives any one batch's exception."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from embedbalance_worker import (
    Batcher,
    EmbeddingModel,
    Liveness,
    Progress,
    WorkerConfig,
    create_app,
)

RULES = Liveness(stuck_after_s=10.0, failures_to_unhealthy=3, failure_window_s=30.0)


def _progress(**changes: Any) -> Progress:
    base: dict[str, Any] = dict(
        alive=True,
        running_since=None,
        waiting_since=None,
        consecutive_failures=0,
        last_failure_at=None,
        passes=5,
    )
    return Progress(**{**base, **changes})


def test_an_idle_moving_batcher_is_healthy() -> None:
    """No pass running, nothing waiting, no failures: healthy."""
    assert RULES.verdict(_progress(), now=100.0) is None


def test_a_dead_batcher_task_is_unhealthy() -> None:
    """A batching task that ended fails health even with nothing queued."""
    verdict = RULES.verdict(_progress(alive=False), now=100.0)
    assert verdict is not None
    assert verdict[0] == "batcher_stopped"


@given(age=st.floats(min_value=0.0, max_value=1000.0))
def test_a_pass_is_stuck_exactly_when_older_than_the_limit(age: float) -> None:
    """A forward pass running longer than stuck_after_s fails health; a younger one does not."""
    verdict = RULES.verdict(_progress(running_since=1000.0), now=1000.0 + age)
    assert (verdict is not None and verdict[0] == "stuck") == (age > RULES.stuck_after_s)


@given(age=st.floats(min_value=0.0, max_value=1000.0), running=st.booleans())
def test_waiting_work_is_stuck_only_when_no_pass_runs(age: float, running: bool) -> None:
    """Work that waits past the limit with no pass running fails health; behind a young
    running pass it is just queueing."""
    verdict = RULES.verdict(
        _progress(waiting_since=1000.0, running_since=1000.0 + age if running else None),
        now=1000.0 + age,
    )
    stuck = not running and age > RULES.stuck_after_s
    assert (verdict is not None) == stuck


@given(
    failures=st.integers(min_value=0, max_value=10),
    since=st.floats(min_value=0.0, max_value=100.0),
)
def test_recent_failures_in_a_row_fail_health_and_age_out(failures: int, since: float) -> None:
    """failures_to_unhealthy failed passes in a row fail health while the last is within
    failure_window_s; older failures, or fewer, do not."""
    verdict = RULES.verdict(
        _progress(consecutive_failures=failures, last_failure_at=500.0), now=500.0 + since
    )
    failing = failures >= RULES.failures_to_unhealthy and since <= RULES.failure_window_s
    assert (verdict is not None and verdict[0] == "failing") == failing


def _rows(batch: Sequence[Sequence[int]]) -> np.ndarray:
    return np.ones((len(batch), 4), dtype=np.float32)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_batcher_survives_exceptions_in_and_around_a_batch(anyio_backend: str) -> None:
    """A forward that raises, a statistics callback that raises and a scheduling step that
    raises each fail at most that batch; the loop goes on serving."""
    calls = {"forward": 0, "stats": 0, "take": 0}

    def forward(batch: Sequence[Sequence[int]]) -> np.ndarray:
        calls["forward"] += 1
        if calls["forward"] == 1:
            raise RuntimeError("boom in forward")
        return _rows(batch)

    def on_batch(stats: object) -> None:
        calls["stats"] += 1
        raise RuntimeError("boom in stats")

    batcher = Batcher(
        forward,
        max_batch_size=8,
        max_batch_tokens=512,
        max_queue_tokens=4096,
        max_wait_s=0.0,
        on_batch=on_batch,
    )
    batcher.start()
    with pytest.raises(RuntimeError, match="boom in forward"):
        await batcher.submit([[1, 2, 3]])
    assert batcher.progress().consecutive_failures == 1
    rows = await batcher.submit([[1, 2], [3]])
    assert rows.shape == (2, 4)
    assert batcher.progress().consecutive_failures == 0
    original = batcher._take

    def take_once_broken() -> Any:
        if calls["take"] == 0:
            calls["take"] += 1
            raise RuntimeError("boom in scheduling")
        return original()

    batcher._take = take_once_broken  # type: ignore[method-assign]
    rows = await asyncio.wait_for(batcher.submit([[5, 6]]), 10)
    assert rows.shape == (1, 4)
    assert batcher.progress().alive
    assert calls["stats"] >= 2
    await batcher.aclose()


class _Flaky:
    """The real model, but forward can be made to fail or to block."""

    def __init__(self, model: EmbeddingModel) -> None:
        self._model = model
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def forward(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        if not self.gate.wait(timeout=30):
            raise RuntimeError("gate never opened")
        if self.fail:
            raise RuntimeError("the device is gone")
        return self._model.forward(batch)


def _wait_health(client: TestClient, status: int, seconds: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        resp = client.get("/health")
        if resp.status_code == status or time.monotonic() > deadline:
            assert resp.status_code == status, resp.text
            return resp.json()  # type: ignore[no-any-return]
        time.sleep(0.02)


def test_health_fails_after_forward_failures_and_recovers_on_success(model: EmbeddingModel) -> None:
    """Three failed forward passes in a row turn /health 503 'failing' (callers get a 500
    'backend' error, not a hang); one successful pass turns it back to 200."""
    flaky = _Flaky(model)
    config = WorkerConfig(max_batch_tokens=1024, failures_to_unhealthy=3)
    with TestClient(create_app(config, model=flaky)) as client:  # type: ignore[arg-type]
        _wait_health(client, 200)
        flaky.fail = True
        for i in range(3):
            resp = client.post("/embed", json={"inputs": [f"doomed {i}"]})
            assert resp.status_code == 500
            assert resp.json()["error_type"] == "backend"
        assert _wait_health(client, 503)["error_type"] == "failing"
        flaky.fail = False
        assert client.post("/embed", json={"inputs": ["fine again"]}).status_code == 200
        _wait_health(client, 200)


def test_health_fails_while_a_forward_pass_is_stuck(model: EmbeddingModel) -> None:
    """A forward pass that does not return within stuck_after_s turns /health 503 'stuck';
    when it returns, health is 200 again and the caller gets its rows."""
    flaky = _Flaky(model)
    config = WorkerConfig(max_batch_tokens=1024, stuck_after_s=0.3)
    with TestClient(create_app(config, model=flaky)) as client:  # type: ignore[arg-type]
        _wait_health(client, 200)
        flaky.gate.clear()
        answers: list[int] = []
        caller = threading.Thread(
            target=lambda: answers.append(
                client.post("/embed", json={"inputs": ["slow"]}).status_code
            )
        )
        caller.start()
        try:
            assert _wait_health(client, 503)["error_type"] == "stuck"
        finally:
            flaky.gate.set()
        caller.join(timeout=30)
        assert answers == [200]
        _wait_health(client, 200)


def test_health_fails_when_the_batching_task_has_died(model: EmbeddingModel) -> None:
    """If the batching task ends for any reason, /health says so instead of 200."""
    config = WorkerConfig(max_batch_tokens=1024)
    with TestClient(create_app(config, model=model)) as client:
        _wait_health(client, 200)
        state = client.app.state.worker  # type: ignore[attr-defined]
        task = state.batcher._task
        client.portal.call(lambda: task.cancel())  # type: ignore[union-attr]
        assert _wait_health(client, 503)["error_type"] == "batcher_stopped"

"""examples/flask_app.py through Flask's own test client, against two real workers."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from examples import flask_app
from flask import Flask
from tests.integrations._checks import (
    BACKENDS_ENV,
    TEXTS,
    Reference,
    check_embeddings,
    dead_url,
    embedbalance_threads,
    per_backend_requests,
    run_in_fork,
)


@pytest.fixture(scope="module")
def app(backends_env: str) -> Iterator[Flask]:
    """The example app, configured the way a user does it: through the environment."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(BACKENDS_ENV, backends_env)
        flask_app_ = flask_app.create_app()
    try:
        yield flask_app_
    finally:
        flask_app.shutdown(flask_app_)


def test_backends_come_from_the_environment(app: Flask, urls: list[str]) -> None:
    """EMBEDBALANCE_BACKENDS, not the default, names the backends the app balances over."""
    assert flask_app.embedder_of(app).backends == urls


def test_default_backends_when_the_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without EMBEDBALANCE_BACKENDS the documented two local workers are used."""
    monkeypatch.delenv(BACKENDS_ENV, raising=False)
    assert flask_app.backends_from_env() == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]


def test_embed_returns_the_workers_embeddings(app: Flask, reference: Reference) -> None:
    """POST /embed answers one normalised 384-wide row per text, equal to a direct
    worker request for that text."""
    texts = TEXTS[:5]
    response = app.test_client().post("/embed", json={"texts": texts})
    assert response.status_code == 200, response.get_data(as_text=True)
    check_embeddings(response.get_json(), texts, reference)


def test_request_threads_share_one_transport(
    app: Flask, reference: Reference, urls: list[str]
) -> None:
    """Concurrent requests from eight threads go through one shared client: its counts
    add up to exactly the requests sent, over the configured workers. (Which workers
    take part is the balancer's business: under this light load the default may send
    every request to the faster worker, which has free slots; its own tests pin fair
    shares.)"""
    holder = flask_app.embedder_of(app)
    shared = holder.get()
    earlier = app.test_client().get("/stats").get_json()
    before = per_backend_requests(earlier)
    jobs = [TEXTS[i : i + 1 + i % 3] for i in range(8, 56)]  # 48 requests of 1-3 texts

    def one(texts: list[str]) -> None:
        response = app.test_client().post("/embed", json={"texts": texts})
        assert response.status_code == 200, response.get_data(as_text=True)
        check_embeddings(response.get_json(), texts, reference)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, jobs))

    assert holder.get() is shared
    stats = app.test_client().get("/stats").get_json()
    after = per_backend_requests(stats)
    delta = {url: after[url] - before.get(url, 0) for url in after}
    assert stats["retries"] == 0
    # Each request of < 8 texts is one sub-batch: one attempt, plus any hedge (a late
    # answer on a busy machine).
    assert sum(delta.values()) == len(jobs) + stats["hedges"] - earlier["hedges"]
    assert set(delta) == set(urls), delta


def test_metrics_count_requests_per_backend(app: Flask, urls: list[str]) -> None:
    """GET /metrics exposes the app's own registry: a health gauge for both workers, and
    success counters over the workers that rose by the requests sent (a hedge's copy
    may add one). Not successes on both: under light load the default may send every
    request to the faster worker, as test_request_threads_share_one_transport says."""
    client = app.test_client()

    def successes() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        for url in urls:
            assert f'embedbalance_backend_healthy{{backend="{url}"}} 1.0' in text
        total = 0.0
        for line in text.splitlines():
            for url in urls:
                prefix = f'embedbalance_requests_total{{backend="{url}",outcome="success"}} '
                if line.startswith(prefix):
                    total += float(line[len(prefix) :])
        return total

    hedges_before = client.get("/stats").get_json()["hedges"]
    before = successes()
    for i in range(4):
        assert client.post("/embed", json={"texts": [TEXTS[i]]}).status_code == 200
    hedges = client.get("/stats").get_json()["hedges"] - hedges_before
    assert 4 <= successes() - before <= 4 + hedges


@pytest.mark.parametrize(
    "body",
    [{"text": "x"}, {"texts": []}, {"texts": ["ok", ""]}, {"texts": ["ok", 3]}, ["x"]],
)
def test_bad_input_is_a_400(app: Flask, body: object) -> None:
    """A malformed body is the caller's mistake (400), never sent to a backend."""
    response = app.test_client().post("/embed", json=body)
    assert response.status_code == 400
    assert "error" in response.get_json()


def test_no_backend_answering_is_a_503() -> None:
    """When no backend can answer, /embed says 503 instead of raising a 500."""
    down = flask_app.create_app([dead_url()])
    try:
        response = down.test_client().post("/embed", json={"texts": ["hello"]})
        assert response.status_code == 503
        assert "no embedding backend" in response.get_json()["error"]
    finally:
        flask_app.shutdown(down)


def test_forked_child_builds_its_own_client(app: Flask, reference: Reference) -> None:
    """After a fork (a gunicorn worker) the child drops the parent's client, builds its
    own and embeds with it; the parent's client is untouched."""
    holder = flask_app.embedder_of(app)
    parent = holder.get()

    def child() -> None:
        mine = holder.get()
        assert mine is not parent
        response = app.test_client().post("/embed", json={"texts": [TEXTS[60]]})
        assert response.status_code == 200, response.get_data(as_text=True)
        check_embeddings(response.get_json(), [TEXTS[60]], reference)
        holder.close()

    assert run_in_fork(child) == 0
    assert holder.get() is parent
    response = app.test_client().post("/embed", json={"texts": [TEXTS[61]]})
    assert response.status_code == 200


def test_shutdown_leaves_no_embedbalance_threads(backends_env: str) -> None:
    """shutdown() closes the client: every thread it started (pool, health checks) is
    joined."""
    before = embedbalance_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(BACKENDS_ENV, backends_env)
        app = flask_app.create_app()
    with ThreadPoolExecutor(4) as pool:
        codes = list(
            pool.map(
                lambda t: app.test_client().post("/embed", json={"texts": [t]}).status_code,
                TEXTS[:8],
            )
        )
    assert codes == [200] * 8
    assert embedbalance_threads() - before  # the client did start threads
    flask_app.shutdown(app)
    assert embedbalance_threads() - before == set()

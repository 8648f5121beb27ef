"""examples/django_app through Django's own test client, against two real workers.

Django's settings are global to a process: this module configures them once, from the
example's own settings module, with ``EMBEDBALANCE_BACKENDS`` naming the test workers.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import pytest
from django.test import Client
from tests.integrations._checks import (
    BACKENDS_ENV,
    TEXTS,
    Reference,
    check_embeddings,
    embedbalance_threads,
    per_backend_requests,
    run_in_fork,
)
from tests.integrations.conftest import ROOT

PROJECT = ROOT / "examples" / "django_app"


@pytest.fixture(scope="module")
def baseline_threads() -> set[threading.Thread]:
    """embedbalance threads alive before this module's client existed (other modules')."""
    return embedbalance_threads()


@pytest.fixture(scope="module")
def embedder(backends_env: str, baseline_threads: set[threading.Thread]) -> Iterator[ModuleType]:
    """The example project set up in this process, the way ``manage.py`` does it; yields
    its per-process embedder module and closes the client at the end."""
    import django
    from django.test.utils import setup_test_environment, teardown_test_environment

    if str(PROJECT) not in sys.path:
        sys.path.insert(0, str(PROJECT))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(BACKENDS_ENV, backends_env)
        mp.setenv("DJANGO_SETTINGS_MODULE", "embedsite.settings")
        django.setup()
        from django.conf import settings

        settings.EMBEDBALANCE  # noqa: B018 - read the settings while the variable is set
    setup_test_environment()  # lets the test client's "testserver" host through
    from embedsite import embedder as module

    try:
        yield module
    finally:
        module.close()
        teardown_test_environment()


def client() -> Client:
    """A fresh Django test client (one per thread: it keeps cookies)."""
    return Client()


def test_settings_carry_the_backends(embedder: ModuleType, urls: list[str]) -> None:
    """settings.EMBEDBALANCE's config names the workers from the environment and the
    client is built from it, with the project's options underneath."""
    from django.conf import settings

    assert [b.url for b in settings.EMBEDBALANCE["CONFIG"].backends] == urls
    pool_urls = [b.url for b in embedder.get().client.transport.pool.backends]
    assert sorted(pool_urls) == sorted(urls)


def test_embed_view_returns_the_workers_embeddings(
    embedder: ModuleType, reference: Reference
) -> None:
    """POST /embed answers one normalised 384-wide row per text, equal to a direct
    worker request for that text."""
    texts = TEXTS[:6]
    response = client().post("/embed", {"texts": texts}, content_type="application/json")
    assert response.status_code == 200, response.content
    check_embeddings(response.json(), texts, reference)


def test_one_client_per_process_shared_by_threads(
    embedder: ModuleType, reference: Reference, urls: list[str]
) -> None:
    """Concurrent requests from six threads all use the one client of the process: its
    counts add up to exactly the requests sent, over the process's pool of workers."""
    shared = embedder.get()
    earlier = client().get("/stats").json()
    before = per_backend_requests(earlier)
    jobs = [TEXTS[i : i + 1 + i % 2] for i in range(10, 46)]  # 36 requests of 1-2 texts

    def one(texts: list[str]) -> None:
        response = client().post("/embed", {"texts": texts}, content_type="application/json")
        assert response.status_code == 200, response.content
        check_embeddings(response.json(), texts, reference)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(one, jobs))

    assert embedder.get() is shared
    stats = client().get("/stats").json()
    after = per_backend_requests(stats)
    delta = {url: after[url] - before.get(url, 0) for url in after}
    assert stats["retries"] == 0
    # One attempt per request, plus any hedge (a late answer on a busy machine).
    assert sum(delta.values()) == len(jobs) + stats["hedges"] - earlier["hedges"]
    # Which workers take part is the balancer's business (its own tests pin fair
    # shares); here it is enough that every request went through the one client, over
    # the configured workers.
    assert set(delta) == set(urls), delta


def test_metrics_view(embedder: ModuleType, urls: list[str]) -> None:
    """GET /metrics exposes the process's own registry, with successes per worker."""
    for i in range(4):
        response = client().post("/embed", {"texts": [TEXTS[i]]}, content_type="application/json")
        assert response.status_code == 200
    text = client().get("/metrics").content.decode()
    assert "embedbalance_backend_healthy" in text
    assert any(
        f'embedbalance_requests_total{{backend="{url}",outcome="success"}}' in text for url in urls
    )


@pytest.mark.parametrize("body", ['{"texts": []}', '{"texts": [""]}', "not json", '["x"]'])
def test_bad_body_is_a_400(embedder: ModuleType, body: str) -> None:
    """A malformed body is the caller's mistake (400), never sent to a backend."""
    response = client().post("/embed", body, content_type="application/json")
    assert response.status_code == 400
    assert "error" in response.json()


def test_embed_needs_post(embedder: ModuleType) -> None:
    """GET /embed is refused with 405 rather than treated as an empty request."""
    assert client().get("/embed").status_code == 405


def test_forked_child_builds_its_own_client(embedder: ModuleType, reference: Reference) -> None:
    """After a fork (gunicorn --preload starting a worker) the child drops the parent's
    client, builds its own from settings and embeds with it; the parent's is untouched."""
    parent = embedder.get()

    def child() -> None:
        mine = embedder.get()
        assert mine is not parent
        assert embedder.get() is mine
        response = client().post("/embed", {"texts": [TEXTS[62]]}, content_type="application/json")
        assert response.status_code == 200, response.content
        check_embeddings(response.json(), [TEXTS[62]], reference)
        embedder.close()

    assert run_in_fork(child) == 0
    assert embedder.get() is parent


def test_close_joins_every_embedbalance_thread(
    embedder: ModuleType, baseline_threads: set[threading.Thread]
) -> None:
    """embedder.close() (what atexit and a gunicorn worker_exit hook call) joins every
    thread the client started; the next request builds a new client."""
    old = embedder.get()
    response = client().post("/embed", {"texts": [TEXTS[63]]}, content_type="application/json")
    assert response.status_code == 200
    assert embedbalance_threads() - baseline_threads
    embedder.close()
    assert embedbalance_threads() - baseline_threads == set()
    response = client().post("/embed", {"texts": [TEXTS[63]]}, content_type="application/json")
    assert response.status_code == 200
    assert embedder.get() is not old

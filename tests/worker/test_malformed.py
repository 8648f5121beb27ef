"""Every malformed input gets its own 4xx JSON error, and the worker keeps serving: in
process, and against a real worker over one keep-alive connection."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient
from tests.helpers.worker_proc import WorkerProcess, start_worker
from tests.worker.malformed import CASES, Case

GOOD = json.dumps({"inputs": ["still working"]}).encode()


def _headers(case: Case) -> dict[str, str]:
    return {"content-type": case.content_type} if case.content_type else {}


def _check_error(status: int, body: bytes, case: Case) -> None:
    assert status == case.status, body[:300]
    data = json.loads(body)
    assert data["error_type"] == case.error_type, data
    assert isinstance(data["error"], str)
    assert data["error"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_input_is_a_json_4xx_in_process(client: TestClient, case: Case) -> None:
    """Each malformed body is refused with its status and error_type, never a 500, and the
    next request is served."""
    resp = client.post(case.path, content=case.body, headers=_headers(case))
    _check_error(resp.status_code, resp.content, case)
    good = client.post("/embed", content=GOOD, headers={"content-type": "application/json"})
    assert good.status_code == 200
    assert len(good.json()[0]) == 384


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    """One real worker with a small payload limit, so an oversized body is cheap to send."""
    with start_worker(
        "--torch-threads", "1", "--payload-limit", "2000000", "--max-batch-tokens", "1024"
    ) as proc:
        yield proc


def test_malformed_inputs_keep_the_connection_usable(worker: WorkerProcess) -> None:
    """Over one keep-alive connection to a real worker, every malformed body gets its 4xx
    and the very next request on the same connection succeeds."""
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=60)
    try:
        conn.connect()
        assert conn.sock is not None
        local = conn.sock.getsockname()
        for case in CASES:
            conn.request("POST", case.path, body=case.body, headers=_headers(case))
            resp = conn.getresponse()
            body = resp.read()
            _check_error(resp.status, body, case)
            assert resp.getheader("connection", "").lower() != "close", case.name
            conn.request("POST", "/embed", body=GOOD, headers={"content-type": "application/json"})
            good = conn.getresponse()
            assert good.status == 200, (case.name, good.read()[:300])
            assert len(json.loads(good.read())[0]) == 384
            assert conn.sock is not None
            assert conn.sock.getsockname() == local, f"connection replaced after {case.name!r}"
    finally:
        conn.close()


def test_oversized_body_is_refused_unread_and_the_connection_survives(
    worker: WorkerProcess,
) -> None:
    """A body over --payload-limit is refused (413) from its Content-Length before it is
    read; the rest of it is discarded and the same connection serves the next request."""
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=60)
    try:
        big = b'{"inputs": "' + b"x" * 2_500_000 + b'"}'
        conn.request("POST", "/embed", body=big, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        _check_error(resp.status, resp.read(), Case("big", "/embed", b"", 413, "body_too_large"))
        assert conn.sock is not None
        local = conn.sock.getsockname()
        conn.request("POST", "/embed", body=GOOD, headers={"content-type": "application/json"})
        good = conn.getresponse()
        assert good.status == 200
        good.read()
        assert conn.sock.getsockname() == local
    finally:
        conn.close()

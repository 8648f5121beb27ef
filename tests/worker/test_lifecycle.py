"""Start-up and shutdown of the real process: loading 503, SIGTERM drain, exit codes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from tests.helpers.worker_proc import LISTENING, OFFLINE_ENV, start_worker


def test_sigterm_drains_queued_work_then_exits_zero() -> None:
    """On SIGTERM: health 503, new work 503 + Retry-After, queued work answered, exit 0."""
    worker = start_worker("--delay-ms", "400", "--max-batch-size", "1")
    try:
        with ThreadPoolExecutor(4) as pool:
            queued = [
                pool.submit(
                    httpx.post, worker.url + "/embed", json={"inputs": [f"q{i}"]}, timeout=30
                )
                for i in range(4)
            ]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                metrics = httpx.get(worker.url + "/metrics").text
                if "embedbalance_worker_in_flight 4.0" in metrics:
                    break
                time.sleep(0.02)
            os.kill(worker.pid, signal.SIGTERM)
            time.sleep(0.2)
            health = httpx.get(worker.url + "/health")
            late = httpx.post(worker.url + "/embed", json={"inputs": ["late"]})
            results = [f.result() for f in queued]
        assert health.status_code == 503
        assert late.status_code == 503
        assert late.json()["error_type"] == "draining"
        assert int(late.headers["retry-after"]) >= 1
        assert [r.status_code for r in results] == [200] * 4
        assert worker.proc.wait(timeout=30) == 0
    finally:
        worker.kill()


def test_health_is_503_while_the_model_loads() -> None:
    """The port answers before the model is ready: /health 503 and /embed 503 'loading'."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedbalance_worker", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **OFFLINE_ENV},
        text=True,
    )
    try:
        assert proc.stdout is not None
        match = LISTENING.search(proc.stdout.readline())
        assert match, "no listening line"
        url = match.group(1)
        first = None
        deadline = time.monotonic() + 120
        while first is None and time.monotonic() < deadline:
            try:
                first = httpx.get(url + "/health")
                embed = httpx.post(url + "/embed", json={"inputs": "x"})
            except httpx.TransportError:
                time.sleep(0.02)
        assert first is not None
        assert first.status_code == 503
        assert embed.status_code == 503
        assert embed.json()["error_type"] == "loading"
        while time.monotonic() < deadline:
            if httpx.get(url + "/health").status_code == 200:
                break
            time.sleep(0.1)
        assert httpx.get(url + "/health").status_code == 200
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_a_model_that_fails_to_load_exits_non_zero() -> None:
    """A missing model folder ends the process with a non-zero code instead of hanging."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedbalance_worker",
            "--port",
            "0",
            "--model",
            "/nonexistent-model",
        ],
        capture_output=True,
        env={**os.environ, **OFFLINE_ENV},
        text=True,
        timeout=120,
    )
    assert done.returncode != 0


def test_api_key_from_the_environment() -> None:
    """EMBEDBALANCE_WORKER_API_KEY enables bearer auth; /health stays open for probes."""
    with start_worker(env={"EMBEDBALANCE_WORKER_API_KEY": "k1"}) as worker:
        assert httpx.post(worker.url + "/embed", json={"inputs": "a"}).status_code == 401
        ok = httpx.post(
            worker.url + "/embed", json={"inputs": "a"}, headers={"Authorization": "Bearer k1"}
        )
        assert ok.status_code == 200


def test_sigterm_while_the_model_loads_exits_promptly() -> None:
    """SIGTERM during loading ends the process well within the drain bound, exit 0, even
    though the load itself cannot be interrupted."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedbalance_worker", "--port", "0", "--drain-timeout", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **OFFLINE_ENV},
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert LISTENING.search(proc.stdout.readline()), "no listening line"
        time.sleep(0.3)  # uvicorn installs its signal handlers right after the line
        os.kill(proc.pid, signal.SIGTERM)
        started = time.monotonic()
        code = proc.wait(timeout=30)
        assert code == 0
        assert time.monotonic() - started < 2 + 5 + 2
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.mark.slow  # ~12 s, most of it the bound itself; the drain test stays in the default run
def test_sigterm_with_a_forward_pass_that_never_ends_is_bounded() -> None:
    """A forward pass that hangs past the drain timeout cannot hold the process: it exits
    within drain timeout + 5 s of SIGTERM."""
    worker = start_worker(
        "--delay-ms", "120000", "--drain-timeout", "1", "--max-batch-tokens", "512"
    )
    try:
        with ThreadPoolExecutor(1) as pool:
            hung = pool.submit(
                lambda: httpx.post(worker.url + "/embed", json={"inputs": ["x"]}, timeout=60)
            )
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if "embedbalance_worker_in_flight 1.0" in httpx.get(worker.url + "/metrics").text:
                    break
                time.sleep(0.05)
            os.kill(worker.pid, signal.SIGTERM)
            started = time.monotonic()
            worker.proc.wait(timeout=30)
            elapsed = time.monotonic() - started
            with contextlib.suppress(httpx.HTTPError):  # the process is gone
                hung.result(timeout=30)
        assert elapsed < 1 + 5 + 2.5, elapsed
    finally:
        worker.kill()

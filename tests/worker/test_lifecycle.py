"""Start-up and shutdown of the real process: loading 503, SIGTERM drain, exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
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

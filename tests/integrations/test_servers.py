"""Each example runs the way its docstring tells a user to start it — a real server
process on loopback — answers a real embedding and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from tests.integrations._checks import BACKENDS_ENV, TEXTS, Reference, check_embeddings, free_port
from tests.integrations.conftest import ROOT

COMMANDS = {
    "flask": ["-m", "flask", "--app", "examples/flask_app", "run", "--port", "{port}"],
    "django": ["examples/django_app/manage.py", "runserver", "127.0.0.1:{port}", "--noreload"],
    "fastapi": ["-m", "uvicorn", "examples.fastapi_app:app", "--port", "{port}"],
}


@pytest.fixture(params=sorted(COMMANDS))
def server(request: pytest.FixtureRequest, backends_env: str) -> Iterator[str]:
    """One example started from the repository root with the documented command; its
    base URL once it answers. Stopped by its PID."""
    port = free_port()
    args = [arg.format(port=port) for arg in COMMANDS[request.param]]
    env = {**os.environ, BACKENDS_ENV: backends_env, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{request.param} exited early:\n{proc.stdout.read()}")  # type: ignore[union-attr]
            try:
                if httpx.get(url + "/stats", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{request.param} did not answer within 30 s")
            time.sleep(0.1)
        yield url
        # Ctrl-C: the server shuts down and the interpreter must be able to exit (a
        # leftover non-daemon thread would hold it).
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{request.param} did not exit within 15 s of Ctrl-C")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_example_serves_real_embeddings(server: str, reference: Reference) -> None:
    """The started example embeds through both workers' pool and answers the same rows
    as a direct worker request."""
    texts = TEXTS[:3]
    response = httpx.post(server + "/embed", json={"texts": texts}, timeout=30)
    assert response.status_code == 200, response.text
    check_embeddings(response.json(), texts, reference)

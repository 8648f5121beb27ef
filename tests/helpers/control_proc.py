"""Start and stop :mod:`control_server` processes for tests (by PID, always)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

SERVER = Path(__file__).with_name("control_server.py")


class ControlServer:
    """One control-server process; restartable on the same port after a kill."""

    def __init__(
        self,
        *,
        mode: str = "ok",
        delay: float = 0.0,
        slots: int = 0,
        port: int = 0,
        start: bool = True,
    ) -> None:
        self.args = {"mode": mode, "delay": delay, "slots": slots}
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        if start:
            self.start()

    @classmethod
    def start_many(cls, n: int, **kwargs: Any) -> list[ControlServer]:
        """``n`` servers whose start-ups overlap: each is an interpreter importing
        uvicorn (~0.2 s of CPU), and the suite starts hundreds of them. If one fails,
        the others are killed before raising."""
        servers = [cls(**kwargs, start=False) for _ in range(n)]
        try:
            for server in servers:
                server._spawn()
            for server in servers:
                server._await_ready()
        except BaseException:
            for server in servers:
                server.kill()
            raise
        return servers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._spawn()
        self._await_ready()

    def _spawn(self) -> None:
        cmd = [
            sys.executable,
            str(SERVER),
            "--port",
            str(self.port),
            "--mode",
            str(self.args["mode"]),
            "--delay",
            str(self.args["delay"]),
            "--slots",
            str(self.args["slots"]),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

    def _await_ready(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.kill()
            raise RuntimeError(f"control server did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code in (200, 503):
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("control server never answered")

    def control(self, **cfg: Any) -> None:
        httpx.post(self.url + "/_control", json=cfg, timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(self.url + "/_stats", timeout=5).json()
        return result

    def reset(self) -> None:
        httpx.post(self.url + "/_reset", timeout=5).raise_for_status()

    def kill(self) -> None:
        """SIGKILL: the process dies with requests in flight, as a crashed pod does."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM without waiting: :func:`stop_all` signals every server first, so
        their graceful shutdowns overlap."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def stop_all(servers: list[ControlServer]) -> None:
    """Stop every server, their shutdowns overlapping (each waits up to a second for
    requests still held in "hang" mode)."""
    for server in servers:
        server.terminate()
    for server in servers:
        server.stop()


def free_port() -> int:
    """A loopback port with nothing listening on it (for 'backend down' cases)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port

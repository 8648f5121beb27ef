"""Start a real ``embedbalance-worker`` subprocess on an ephemeral loopback port.

Why a subprocess and not an in-process app: lifecycle, signals, concurrency and batching
are only honest against the real CLI, the real model and a real socket.

    with start_worker("--max-wait-ms", "5") as worker:
        httpx.post(worker.url + "/embed", json={"inputs": ["hi"]})
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx

LISTENING = re.compile(r"embedbalance-worker listening on (http://\S+:(\d+))")
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
_SRC = Path(__file__).resolve().parents[2] / "src"


class WorkerStartError(RuntimeError):
    """The worker exited or did not become healthy in time; the message has its stderr."""


class WorkerProcess:
    """A running worker: ``url``, ``port``, ``pid``, ``proc``; stop it with ``stop()``."""

    def __init__(self, proc: subprocess.Popen[str], url: str, port: int, stderr_path: Path) -> None:
        self.proc = proc
        self.url = url
        self.port = port
        self.pid = proc.pid
        self.stderr_path = stderr_path
        self.stdout_lines: list[str] = []

    def stderr_tail(self, chars: int = 4000) -> str:
        """The end of the worker's log, for failure messages."""
        try:
            return self.stderr_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace: float = 20.0) -> int:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; returns the exit code.
        The log file goes too (a suite starts hundreds of workers, each with one)."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        return self.kill()  # SIGKILL only if it is still running

    def kill(self) -> int:
        """SIGKILL at once (a crash, as a balancer sees it); returns the exit code. The
        log file goes with the process."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        code = int(self.proc.wait(timeout=10))
        with contextlib.suppress(OSError):
            self.stderr_path.unlink()
        return code

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _pump(stream: object, lines: queue.Queue[str | None], keep: list[str]) -> None:
    """Read the worker's stdout until EOF so its pipe never fills and blocks it."""
    for line in stream:  # type: ignore[attr-defined]
        keep.append(line)
        lines.put(line)
    lines.put(None)


def start_worker(
    *cli_args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> WorkerProcess:
    """Run ``python -m embedbalance_worker --port 0 *cli_args`` and wait for ``/health`` 200.

    ``env`` adds to (and overrides) the inherited environment, which is forced offline.
    Raises :class:`WorkerStartError` if the worker exits or is not healthy within
    ``timeout`` seconds; the process is killed first.
    """
    args = list(cli_args)
    if "--port" not in args:
        args = ["--port", "0", *args]
    full_env = {**os.environ, **OFFLINE_ENV, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_SRC), full_env.get("PYTHONPATH", "")) if p
    )
    fd, name = tempfile.mkstemp(prefix="embedbalance-worker-", suffix=".log")
    stderr_path = Path(name)
    with os.fdopen(fd, "w") as stderr_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "embedbalance_worker", *args],
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            env=full_env,
            text=True,
        )
    lines: queue.Queue[str | None] = queue.Queue()
    kept: list[str] = []
    threading.Thread(target=_pump, args=(proc.stdout, lines, kept), daemon=True).start()
    deadline = time.monotonic() + timeout

    def fail(why: str) -> WorkerStartError:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        log = stderr_path.read_text(errors="replace")[-4000:]
        with contextlib.suppress(OSError):
            stderr_path.unlink()
        return WorkerStartError(f"worker {why} (exit {proc.returncode}); stderr:\n{log}")

    url: str | None = None
    port = 0
    while url is None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise fail(f"printed no listening line within {timeout}s")
        try:
            line = lines.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        if line is None:
            raise fail("exited before listening")
        match = LISTENING.search(line)
        if match:
            url, port = match.group(1), int(match.group(2))
    worker = WorkerProcess(proc, url, port, stderr_path)
    worker.stdout_lines = kept
    with httpx.Client(timeout=2.0) as client:
        while True:
            if proc.poll() is not None:
                raise fail("exited while loading")
            try:
                if client.get(url + "/health").status_code == 200:
                    return worker
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise fail(f"was not healthy within {timeout}s")
            time.sleep(0.1)


def start_workers(n: int, *cli_args: str, timeout: float = 120.0) -> list[WorkerProcess]:
    """Start ``n`` workers in parallel (model loading dominates, so this takes about as
    long as one); if any fails, the ones that started are killed before raising."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(start_worker, *cli_args, timeout=timeout) for _ in range(n)]
        started: list[WorkerProcess] = []
        try:
            for fut in futures:
                started.append(fut.result())
        except BaseException:
            for fut in futures:
                if fut.exception() is None:
                    fut.result().kill()
            raise
    return started


#: The arguments of the suite's ordinary workers (one torch thread each, so that
#: several share two cores; a short batching wait).
STANDARD_ARGS = ("--torch-threads", "1", "--max-wait-ms", "2")


class WorkerSupply:
    """Fresh workers handed out one at a time, the next ones starting in the background
    while the last is in use.

    Why: tests that kill a replica need a fresh one each, and a worker takes ~6 s to
    start (interpreter, torch, the model) — time the tests before it mostly spend
    waiting on sockets, and often longer than one such test runs, so ``ahead`` (2)
    start at once. ``count`` is how many will be taken (the tests that ask for one,
    counted at collection), so no spare is started that nobody uses. Workers started
    and not taken by :meth:`close` are killed.
    """

    def __init__(self, count: int, *cli_args: str, ahead: int = 2, timeout: float = 120.0) -> None:
        from concurrent.futures import Future, ThreadPoolExecutor

        self._left = count
        self._args = cli_args
        self._ahead = max(1, ahead)
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(self._ahead, thread_name_prefix="worker-supply")
        self._ready: list[Future[WorkerProcess]] = []
        self._prefetch()

    def _prefetch(self) -> None:
        while len(self._ready) < min(self._ahead, self._left):
            self._ready.append(self._pool.submit(start_worker, *self._args, timeout=self._timeout))

    def take(self) -> WorkerProcess:
        """The next worker (waiting for its start if it is not up yet)."""
        if self._ready:
            future = self._ready.pop(0)
        else:  # more taken than counted (a test run twice)
            future = self._pool.submit(start_worker, *self._args, timeout=self._timeout)
        self._left -= 1
        try:
            return future.result()
        finally:
            self._prefetch()

    def close(self) -> None:
        """Kill the workers started and not taken; stop the starter threads."""
        ready, self._ready = self._ready, []
        for future in ready:
            if future.exception() is None:
                future.result().kill()
        self._pool.shutdown(wait=True)

"""embedbalance, end to end: three real workers, one slow, one killed midway.

    python examples/demo.py            # or: nox -s demo

What happens:

1. Three reference workers start on loopback with the real model (one torch thread
   each); ``w3`` is made slow with ``--delay-ms``.
2. Python's own documentation (``pydoc_data.topics``, split into paragraphs) is embedded
   through :class:`embedbalance.EmbeddingClient` with the default balancer (ShortestExpectedDelay),
   with a live progress bar showing how many texts each backend has answered.
3. About 40 % in, ``w2`` is SIGKILLed, then restarted on the same port; its sub-batches
   are retried on the others, and health checks bring it back once it is ready.
4. The result is checked: one row per paragraph, and a random sample of rows equal to a
   direct single-text request to a worker.
5. A summary table and a PNG of throughput and latency over time per backend are
   written to ``demo-output/`` (``--output``).

Every process started here is stopped by its PID on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_corpus import paragraphs

import embedbalance as eb
from embedbalance.client import BatchEvent, EmbeddingClient

LISTENING = re.compile(r"listening on (http://\S+:(\d+))")
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
COLORS = {"w1": "tab:blue", "w2": "tab:orange", "w3": "tab:green"}


class Worker:
    """One ``embedbalance-worker`` subprocess, in its own session so that a Ctrl-C in
    the terminal reaches only the demo, which then stops it by PID."""

    def __init__(self, name: str, role: str, extra: Sequence[str], log_dir: Path) -> None:
        self.name, self.role, self.extra = name, role, list(extra)
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.url = ""
        self._lines: queue.Queue[str | None] = queue.Queue()

    def spawn(self) -> None:
        """Start the process (``--port 0`` the first time, the same port after that)."""
        cmd = [sys.executable, "-m", "embedbalance_worker", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--torch-threads", "1", "--log-level", "warning"]
        self._lines = queue.Queue()
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [*cmd, *self.extra],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, **OFFLINE_ENV},
                start_new_session=True,
            )
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the worker prints its address and answers ``/health`` with 200."""
        deadline = time.monotonic() + timeout
        while not self.url or self.port == 0:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.name} printed no address in {timeout:.0f}s") from None
            if line is None:
                raise RuntimeError(f"{self.name} exited; see {self.log_path}")
            match = LISTENING.search(line)
            if match:
                self.url, self.port = match.group(1), int(match.group(2))
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited while loading; see {self.log_path}")
                try:
                    if http.get(self.url + "/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not healthy within {timeout:.0f}s")

    def kill(self) -> None:
        """SIGKILL: a crash, as the balancer sees it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (the worker drains), then SIGKILL if it takes longer than ``grace``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()


class Recorder:
    """Collects every answered sub-batch and drives the live progress bar."""

    def __init__(self, t0: float, total: int, names: dict[str, str]) -> None:
        from tqdm import tqdm

        self.t0, self.names = t0, names
        self.events: list[BatchEvent] = []
        self.texts: Counter[str] = Counter()
        self.downs: Counter[str] = Counter()  # times marked unhealthy by active checks
        self._lock = threading.Lock()
        self.bar = tqdm(
            total=total, unit="text", desc="embedding", dynamic_ncols=True, mininterval=0.5
        )

    def __call__(self, event: BatchEvent) -> None:
        with self._lock:
            self.events.append(event)
            self.texts[event.backend] += event.texts
            self.bar.update(event.texts)
            self.bar.set_postfix_str(
                " ".join(f"{self.names[u]}={self.texts[u]}" for u in self.names), refresh=False
            )

    def log(self, message: str) -> None:
        self.bar.write(f"[{time.monotonic() - self.t0:6.1f}s] {message}")

    def done(self) -> int:
        with self._lock:
            return sum(self.texts.values())


def verify(matrix: np.ndarray, corpus: list[str], url: str, samples: int, seed: int) -> float:
    """Worst absolute difference between sampled rows and a direct single-text request."""
    if matrix.shape != (len(corpus), 384):
        raise AssertionError(f"expected {(len(corpus), 384)} rows, got {matrix.shape}")
    rng = random.Random(seed)
    picks = rng.sample(range(len(corpus)), min(samples, len(corpus)))
    worst = 0.0
    with httpx.Client(base_url=url, timeout=30.0) as http:
        for i in picks:
            answer = http.post("/embed", json={"inputs": [corpus[i]], "truncate": True})
            answer.raise_for_status()
            direct = np.asarray(answer.json()[0], dtype=np.float32)
            worst = max(worst, float(np.abs(matrix[i] - direct).max()))
    return worst


def summary_rows(client: EmbeddingClient, rec: Recorder) -> list[list[str]]:
    stats = client.stats().pool.by_url()

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f}"

    rows = []
    for url, name in rec.names.items():
        s = stats[url]
        rows.append(
            [
                name,
                url.removeprefix("http://"),
                str(s.requests),
                str(s.failures),
                str(rec.texts[url]),
                ms(s.latency_p50),
                ms(s.latency_p99),
                str(s.ejections),
                str(rec.downs[url]),
            ]
        )
    return rows


HEADER = [
    "backend",
    "address",
    "requests",
    "failures",
    "texts",
    "p50 ms",
    "p99 ms",
    "ejections",
    "marked down",
]


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    line = "  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plot(rec: Recorder, marks: dict[str, float], path: Path, window: float = 6.0) -> None:
    """Throughput (texts/s over a sliding ``window``) and sub-batch latency over time,
    per backend. A sliding window, because sub-batches finish in lumps of 10-30 texts and
    fixed bins would draw mostly spikes and zeros."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    ends = np.asarray([e.started + e.latency - rec.t0 for e in rec.events])
    horizon = float(ends.max(initial=1.0))
    grid = np.arange(0.0, horizon + 0.5, 0.5)
    for url, name in rec.names.items():
        mine = [i for i, e in enumerate(rec.events) if e.backend == url]
        at = ends[mine]
        texts = np.asarray([rec.events[i].texts for i in mine], dtype=float)
        rate = [texts[(at > t - window) & (at <= t)].sum() / window for t in grid]
        color = COLORS.get(name.split()[0])
        top.plot(grid, rate, label=name, color=color)
        lat = [rec.events[i].latency * 1000 for i in mine]
        bottom.scatter(at, lat, s=10, label=name, color=color, alpha=0.7)
    for label, at in marks.items():
        for ax in (top, bottom):
            ax.axvline(at, color="red" if "SIGKILL" in label else "gray", linestyle="--", lw=1)
        top.annotate(
            label,
            (at, 0.98),
            xycoords=("data", "axes fraction"),
            fontsize=8,
            rotation=90,
            va="top",
            ha="right",
        )
    top.set_ylabel(f"texts / s ({window:.0f} s window)")
    top.set_title("Per-backend throughput and sub-batch latency (default balancer, 3 CPU workers)")
    top.legend(loc="upper right", fontsize=8)
    bottom.set_ylabel("sub-batch latency (ms)")
    bottom.set_yscale("log")
    bottom.set_xlabel("seconds since start")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace, workers: list[Worker], t0: float) -> int:
    out = Path(args.output)
    corpus = paragraphs(args.texts)
    print(f"corpus: {len(corpus)} paragraphs of Python's documentation (pydoc_data.topics)")
    for w in workers:
        w.spawn()
    for w in workers:
        w.wait_ready()
        print(f"  {w.name} ({w.role}) ready at {w.url}, pid {w.proc.pid if w.proc else '?'}")
    print(f"workers up after {time.monotonic() - t0:.1f}s")

    names = {w.url: f"{w.name} ({w.role})" for w in workers}
    victim = workers[1]
    marks: dict[str, float] = {}
    rec = Recorder(time.monotonic(), len(corpus), names)
    restarter: threading.Thread | None = None
    failures: list[BaseException] = []

    def restart() -> None:
        try:
            victim.spawn()
            victim.wait_ready()
            marks[f"{victim.name} ready again"] = time.monotonic() - rec.t0
            rec.log(f"{victim.name} restarted on the same port and healthy")
        except BaseException as exc:  # reported after the run
            failures.append(exc)

    client = EmbeddingClient(
        [w.url for w in workers],
        truncate=True,
        health_check=eb.HealthCheck(interval=1.0),
        on_batch=rec,
        progress=False,
    )
    interesting = {"ejected", "readmitted", "unhealthy", "healthy", "panic", "calm"}

    def on_pool_event(ev: eb.PoolEvent) -> None:
        if ev.kind == "unhealthy":
            rec.downs[ev.url] += 1
        if ev.kind in interesting:
            rec.log(f"pool: {names.get(ev.url, ev.url)} {ev.kind} {ev.detail}".rstrip())

    client.transport.pool.add_listener(on_pool_event)
    try:
        chunks = []
        for chunk in client.embed_iter(corpus, chunk_size=args.chunk_size):
            chunks.append(chunk)
            if restarter is None and rec.done() >= args.kill_at * len(corpus):
                victim.kill()
                marks[f"{victim.name} SIGKILL"] = time.monotonic() - rec.t0
                rec.log(f"SIGKILL {victim.name} (pid {victim.proc.pid if victim.proc else '?'})")
                restarter = threading.Thread(target=restart, daemon=True)
                restarter.start()
        elapsed = time.monotonic() - rec.t0
        rec.bar.close()
        if restarter is not None:
            restarter.join(timeout=120)
        matrix = np.concatenate(chunks)
        print(
            f"embedded {matrix.shape[0]} texts in {elapsed:.1f}s "
            f"({matrix.shape[0] / elapsed:.1f} texts/s), shape {matrix.shape}, {matrix.dtype}"
        )
        worst = verify(matrix, corpus, workers[0].url, args.samples, args.seed)
        ok = worst < 1e-4
        print(
            f"check: {matrix.shape[0]} rows for {len(corpus)} texts; {args.samples} sampled "
            f"rows vs direct requests: max |diff| = {worst:.2e} -> {'OK' if ok else 'FAILED'}"
        )
        stats = client.stats()
        rows = summary_rows(client, rec)
    finally:
        client.close()

    table = format_table(rows)
    print()
    print(table)
    print(
        f"retries {stats.retries}, hedges {stats.hedges}, "
        f"retry budget exhausted {stats.budget_exhausted}"
    )
    png = out / "demo.png"
    plot(rec, marks, png)
    (out / "summary.md").write_text(
        markdown_table(rows)
        + f"\n\n{matrix.shape[0]} texts in {elapsed:.1f}s; retries {stats.retries}; "
        + f"sample check max |diff| {worst:.2e}\n"
    )
    print(f"\nplot: {png.resolve()}\nsummary: {(out / 'summary.md').resolve()}")
    if failures:
        print(f"restart of {victim.name} failed: {failures[0]!r}")
        return 1
    return 0 if ok else 1


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--texts", type=int, default=2000, help="paragraphs to embed (cap)")
    parser.add_argument("--output", default="demo-output", help="folder for the PNG and table")
    parser.add_argument("--slow-delay-ms", type=float, default=1000.0, help="w3's extra delay")
    parser.add_argument("--kill-at", type=float, default=0.4, help="share done when w2 dies")
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--samples", type=int, default=32, help="rows checked directly")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    # The pool listener below prints state changes above the progress bar; the library's
    # own log lines would say the same thing through the bar.
    logging.getLogger("embedbalance").setLevel(logging.ERROR)
    t0 = time.monotonic()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    workers = [
        Worker("w1", "fast", [], out),
        Worker("w2", "fast, killed", [], out),
        Worker("w3", "slow", ["--delay-ms", str(args.slow_delay_ms)], out),
    ]
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        code = run(args, workers, t0)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping workers", file=sys.stderr)
        code = 130
    finally:
        for w in workers:
            w.stop()
        signal.signal(signal.SIGTERM, previous)
    print(f"demo finished in {time.monotonic() - t0:.1f}s (exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())

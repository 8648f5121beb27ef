"""Interactive and bulk traffic on the same two real workers: what priorities buy.

A bulk job (a re-index: long texts, large sub-batches, many in flight) saturates two
reference workers while an interactive stream (one short query per request, Poisson
arrivals at a modest rate) shares them. Four runs on the same workers:

- ``idle``: the interactive stream alone (its latency on an idle pool);
- ``bulk alone``: the bulk job alone, no priorities, as much in flight as it likes
  (the pool's bulk capacity);
- ``mixed, no priorities``: both at once, every request treated alike (FIFO batcher);
- ``mixed, priorities``: the bulk client sends ``X-Priority: bulk`` and adapts what it
  has in flight (:class:`embedbalance.BulkLimit`); the workers serve interactive first.

Reported: interactive p50 / p99 / p99.9, bulk texts per second, the mean duration of a
forward pass of the bulk-alone run (the "one full forward pass" of the goals), and
the goals themselves:

- interactive p99 with priorities <= idle p99 + one full bulk forward pass;
- interactive p99 with priorities >= 5x better than without;
- bulk throughput with priorities >= 0.9x bulk alone.

Every run is bounded in time (``--window`` seconds after ``--warmup``) and count; all
traffic goes to 127.0.0.1. Run: ``python benchmarks/bench_priority.py`` (writes
bench-results/priority.json and .md), or ``nox -s bench_priority``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import embedbalance as eb  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
WORDS = [
    "embedding",
    "model",
    "replica",
    "batch",
    "queue",
    "latency",
    "throughput",
    "index",
    "search",
    "query",
    "vector",
    "token",
    "document",
    "corpus",
    "nightly",
    "balance",
    "worker",
    "pool",
    "request",
    "answer",
    "forward",
    "pass",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


class Workers:
    """Two worker processes on loopback, stopped by PID."""

    def __init__(self, n: int, args: list[str]) -> None:
        self.ports = [_free_port() for _ in range(n)]
        self.args = args
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def start(self, timeout: float = 120.0) -> None:
        env = {**os.environ, **OFFLINE}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p
        )
        for port in self.ports:
            cmd = [sys.executable, "-m", "embedbalance_worker", "--port", str(port), *self.args]
            self.procs.append(
                subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        deadline = time.monotonic() + timeout
        for url, proc in zip(self.urls, self.procs, strict=True):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {url} exited with {proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {url} not healthy in {timeout}s")
                time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


_SAMPLE = re.compile(r"^(embedbalance_worker_\w+?)(?:\{[^}]*\})? ([0-9.eE+-]+)$")


def scrape(urls: list[str]) -> dict[str, float]:
    """Summed worker metrics (pass counts and durations, queue depths)."""
    total: dict[str, float] = {}
    for url in urls:
        for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
            m = _SAMPLE.match(line)
            if m:
                total[m.group(1)] = total.get(m.group(1), 0.0) + float(m.group(2))
    return total


def wait_idle(urls: list[str], timeout: float = 60.0) -> None:
    """Until no worker holds a request: the next run starts on an empty pool."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = scrape(urls)
        if m.get("embedbalance_worker_in_flight", 0) == 0:
            return
        time.sleep(0.2)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def run(
    urls: list[str],
    *,
    bulk: str | None,
    interactive: bool,
    args: argparse.Namespace,
    seed: int,
) -> dict[str, Any]:
    """One run. ``bulk``: None, ``"fifo"`` (no priorities) or ``"priority"``."""
    rng = random.Random(seed)
    start = end = math.inf  # set once both clients are warm
    bulk_texts = 0
    bulk_failures = 0
    latencies: list[float] = []
    failures = 0

    def on_batch(event: eb.BatchEvent) -> None:
        nonlocal bulk_texts
        done = event.started + event.latency
        if start <= done < end:
            bulk_texts += event.texts

    common = {"health_check": None, "timeout": 60.0, "balancer": eb.LeastConnections}
    bulk_client = (
        eb.AsyncEmbeddingClient(
            urls,
            batch_size=args.bulk_batch,
            max_concurrency=args.bulk_concurrency,
            on_batch=on_batch,
            priority="bulk" if bulk == "priority" else "interactive",
            **common,  # type: ignore[arg-type]
        )
        if bulk
        else None
    )
    query_client = eb.AsyncEmbeddingClient(urls, **common) if interactive else None  # type: ignore[arg-type]
    corpus = [_text(rng, args.bulk_words) for _ in range(2048)]

    async def bulk_loop(offset: int) -> None:
        nonlocal bulk_failures
        assert bulk_client is not None
        i = offset
        while time.monotonic() < end:
            chunk = [corpus[(i + k) % len(corpus)] + f" {i + k}" for k in range(256)]
            i += 256 * 3
            try:
                await bulk_client.embed(chunk)
            except eb.EmbedbalanceError:
                bulk_failures += 1

    async def one_query(text: str, sent: float) -> None:
        nonlocal failures
        assert query_client is not None
        try:
            await query_client.embed([text])
        except eb.EmbedbalanceError:
            failures += 1
            return
        if start <= sent < end:
            latencies.append(time.monotonic() - sent)

    tasks: list[asyncio.Task[None]] = []
    queries: list[asyncio.Task[None]] = []
    try:
        for client in (bulk_client, query_client):
            if client is not None:
                await client.embed(["warm up"])  # reads /info, opens connections
        t0 = time.monotonic()
        start, end = t0 + args.warmup, t0 + args.warmup + args.window
        if bulk_client is not None:
            tasks = [asyncio.ensure_future(bulk_loop(k * 256)) for k in range(3)]
        if query_client is not None:
            at = time.monotonic()
            while len(queries) < args.max_queries:
                at += rng.expovariate(args.rate)
                if at >= end:
                    break
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                queries.append(
                    asyncio.ensure_future(one_query(_text(rng, args.query_words), time.monotonic()))
                )
        else:
            await asyncio.sleep(max(0.0, end - time.monotonic()))
        if queries:  # bounded: a query still unanswered after 90 s counts as failed
            _, unfinished = await asyncio.wait(queries, timeout=90)
            for task in unfinished:
                task.cancel()
            failures += len(unfinished)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        limit = None
        if bulk_client is not None:
            gate = bulk_client._gate
            limit = None if gate is None else round(gate.limiter.limit, 2)
            await bulk_client.aclose()
        if query_client is not None:
            await query_client.aclose()
    return {
        "latencies": latencies,
        "interactive_failures": failures,
        "bulk_texts": bulk_texts if bulk else None,
        "seconds": args.window,
        "bulk_failed_calls": bulk_failures,
        "bulk_limit_at_end": limit,
    }


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One scenario over its rounds: latencies pooled, bulk texts over total time."""
    latencies = [x for r in rounds for x in r["latencies"]]
    seconds = sum(r["seconds"] for r in rounds)
    bulk = [r["bulk_texts"] for r in rounds]
    return {
        "interactive_requests": len(latencies),
        "interactive_failures": sum(r["interactive_failures"] for r in rounds),
        "p50_ms": pct(latencies, 50) * 1000,
        "p99_ms": pct(latencies, 99) * 1000,
        "p999_ms": pct(latencies, 99.9) * 1000,
        "bulk_texts_per_s": None if bulk[0] is None else sum(bulk) / seconds,
        "bulk_texts_per_s_by_round": None
        if bulk[0] is None
        else [b / r["seconds"] for b, r in zip(bulk, rounds, strict=True)],
        "bulk_failed_calls": sum(r["bulk_failed_calls"] for r in rounds),
        "bulk_limit_at_end": rounds[-1]["bulk_limit_at_end"],
    }


def render(results: dict[str, Any]) -> str:
    lines = [
        "| run | interactive p50 | p99 | p99.9 | queries | bulk texts/s | bulk limit at end |",
        "|---|---|---|---|---|---|---|",
    ]

    def ms(x: float) -> str:
        return "—" if x != x else f"{x:.0f} ms"

    for name, r in results["runs"].items():
        bulk = r["bulk_texts_per_s"]
        lines.append(
            f"| {name} | {ms(r['p50_ms'])} | {ms(r['p99_ms'])} | {ms(r['p999_ms'])} | "
            f"{r['interactive_requests']} | {'—' if bulk is None else f'{bulk:.0f}'} | "
            f"{r['bulk_limit_at_end'] if r['bulk_limit_at_end'] is not None else '—'} |"
        )
    lines.append("")
    lines.append(f"One full bulk forward pass (mean, bulk alone): {results['pass_ms']:.0f} ms")
    lines += [f"- {g}" for g in results["goals"]]
    return "\n".join(lines)


def goals(runs: dict[str, dict[str, Any]], pass_ms: float) -> list[str]:
    idle, alone = runs["idle"], runs["bulk alone"]
    fifo, prio = runs["mixed, no priorities"], runs["mixed, priorities"]
    out = []
    bound = idle["p99_ms"] + pass_ms
    ok = prio["p99_ms"] <= bound
    out.append(
        f"{'MET' if ok else 'MISSED'}: interactive p99 with priorities {prio['p99_ms']:.0f} ms "
        f"<= idle p99 + one pass = {bound:.0f} ms"
    )
    ratio = fifo["p99_ms"] / prio["p99_ms"]
    out.append(
        f"{'MET' if ratio >= 5 else 'MISSED'}: interactive p99 {ratio:.1f}x better than "
        f"without priorities (goal >= 5x)"
    )
    share = prio["bulk_texts_per_s"] / alone["bulk_texts_per_s"]
    out.append(
        f"{'MET' if share >= 0.9 else 'MISSED'}: bulk throughput with priorities "
        f"{share:.2f}x of bulk alone (goal >= 0.9x)"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--window", type=float, default=8.0, help="measured seconds per run")
    p.add_argument("--rounds", type=int, default=2, help="times each run is repeated")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--rate", type=float, default=4.0, help="interactive queries per second")
    p.add_argument("--max-queries", type=int, default=1000)
    p.add_argument("--query-words", type=int, default=10)
    p.add_argument("--bulk-words", type=int, default=24)
    p.add_argument("--bulk-batch", type=int, default=16, help="texts per bulk sub-batch")
    p.add_argument("--bulk-concurrency", type=int, default=24, help="bulk sub-batches in flight")
    p.add_argument("--batch-tokens", type=int, default=2048, help="worker --max-batch-tokens")
    p.add_argument(
        "--bulk-batch-tokens", type=int, default=512, help="worker --max-bulk-batch-tokens"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = p.parse_args(argv)
    worker_args = [
        "--torch-threads",
        "1",
        "--max-batch-tokens",
        str(args.batch_tokens),
        "--max-bulk-batch-tokens",
        str(args.bulk_batch_tokens),
    ]
    workers = Workers(2, worker_args)
    raw: dict[str, list[dict[str, Any]]] = {}
    pass_seconds, passes = 0.0, 0.0
    try:
        workers.start()
        plan = [
            ("idle", None, True),
            ("bulk alone", "fifo", False),
            ("mixed, no priorities", "fifo", True),
            ("mixed, priorities", "priority", True),
        ]
        # Rounds interleave the runs, so a shared machine's load drifting during the
        # benchmark weighs on every run alike rather than on whichever ran last.
        for round_ in range(args.rounds):
            for seed, (name, bulk, interactive) in enumerate(plan):
                wait_idle(workers.urls)
                before = scrape(workers.urls)
                one = asyncio.run(
                    run(
                        workers.urls,
                        bulk=bulk,
                        interactive=interactive,
                        args=args,
                        seed=seed + 10 * round_,
                    )
                )
                raw.setdefault(name, []).append(one)
                after = scrape(workers.urls)
                if name == "bulk alone":
                    key = "embedbalance_worker_inference_duration_seconds"
                    passes += after[key + "_count"] - before[key + "_count"]
                    pass_seconds += after[key + "_sum"] - before[key + "_sum"]
                brief = {k: v for k, v in summarise([one]).items() if "round" not in k}
                print(f"round {round_ + 1}, {name}: {json.dumps(brief)}", flush=True)
    finally:
        workers.stop()
    runs = {name: summarise(rounds) for name, rounds in raw.items()}
    pass_ms = 1000 * pass_seconds / max(passes, 1)
    results = {
        "runs": runs,
        "pass_ms": pass_ms,
        "goals": goals(runs, pass_ms),
        "settings": vars(args) | {"out": str(args.out), "worker_args": worker_args},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    md = render(results)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "priority.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out / "priority.md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``embedbalance bench``: how much can each replica take, and what follows for routing
and autoscaling?

Each replica is measured alone (so a fast one does not hide a slow one) with a ramp of
concurrent sub-batches: at each level, ``c`` loops send sub-batches back to back for a
fixed time. Throughput rises with concurrency while the replica's batcher fills its
forward passes, then flattens; the *knee* is the lowest level within 10% of the best
throughput, and the replica's *capacity* is its throughput there. Past the knee extra
concurrency only queues, so latency climbs without more work done.

From the capacities follow:

- **weights** proportional to capacity (the slowest replica = 1), for ``Backend(weight=)``
  or ``WeightedRoundRobin`` (the default balancer measures this by itself, but weights
  are its starting point and what static balancers need);
- **tiers**: replicas under a third of the fastest one's capacity go to tier 1, for
  ``GpuPriority`` (GPU first, spill to CPU);
- an **HPA target**: the worker's queue depth (``X-Queue-Depth``, the
  ``embedbalance_worker_queue_depth`` metric that ``deploy/kubernetes/hpa-queue-depth.yaml``
  scales on) seen at the knee: above it, callers start to queue.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx

from . import FAILED, OK, USAGE

__all__ = ["BenchReport", "Level", "ReplicaBench", "bench_replicas", "run_bench_command"]

#: Share of the best throughput that counts as "at capacity" (the knee).
KNEE_SHARE = 0.9
#: A replica under this share of the fastest one's capacity is suggested for tier 1.
TIER_SHARE = 1 / 3

_WORDS = " ".join(
    (
        "balancing embedding requests across replicas keeps latency low when traffic grows",
        "a worker batches texts by tokens and answers each caller its own rows while the",
        "client splits large inputs into sub-batches sized by capacity retries failed ones",
        "elsewhere and reassembles results in order health checks eject broken pods slow",
        "start eases new ones in and autoscalers add replicas when queues build up",
    )
).split(" ")


def builtin_corpus(n: int = 512, seed: int = 7) -> list[str]:
    """Deterministic texts of 8 to 120 words: a spread of lengths like real documents."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(_WORDS) for _ in range(rng.choice((8, 16, 32, 64, 120))))
        for _ in range(n)
    ]


@attrs.define
class Level:
    """One ramp level on one replica."""

    concurrency: int
    requests: int
    errors: int
    texts: int
    seconds: float
    texts_per_second: float
    p50_ms: float | None
    p95_ms: float | None
    queue_depth: float | None


@attrs.define
class ReplicaBench:
    """One replica's ramp and what it says: capacity (texts/s at the knee)."""

    url: str
    levels: list[Level] = attrs.field(factory=list)
    knee: int | None = None
    capacity: float = 0.0
    p50_ms_at_knee: float | None = None
    queue_depth_at_knee: float | None = None
    error: str | None = None


@attrs.define
class BenchReport:
    """Every replica's ramp plus the suggestions drawn from them."""

    replicas: list[ReplicaBench]
    batch_size: int
    weights: dict[str, float]
    tiers: dict[str, int]
    hpa_queue_depth: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "replicas": [attrs.asdict(r) for r in self.replicas],
            "suggested": {
                "weights": self.weights,
                "tiers": self.tiers,
                "hpa_queue_depth": self.hpa_queue_depth,
            },
        }


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def _level(
    http: httpx.AsyncClient,
    url: str,
    make_body: Callable[[list[str]], dict[str, Any]],
    path: str,
    batches: list[list[str]],
    concurrency: int,
    seconds: float,
    max_requests: int,
) -> Level:
    latencies: list[float] = []
    depths: list[float] = []
    counts = {"requests": 0, "errors": 0, "texts": 0, "next": 0}
    deadline = time.monotonic() + seconds

    async def loop() -> None:
        while time.monotonic() < deadline and counts["requests"] < max_requests:
            batch = batches[counts["next"] % len(batches)]
            counts["next"] += 1
            counts["requests"] += 1
            started = time.monotonic()
            try:
                response = await http.post(url + path, json=make_body(batch))
            except httpx.HTTPError:
                counts["errors"] += 1
                await anyio.sleep(0.05)  # a dead replica must not spin this loop
                continue
            if response.status_code != 200:
                counts["errors"] += 1
                await anyio.sleep(0.05)
                continue
            latencies.append(time.monotonic() - started)
            counts["texts"] += len(batch)
            depth = response.headers.get("x-queue-depth")
            if depth is not None:
                with contextlib.suppress(ValueError):
                    depths.append(float(depth))

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(loop)
    elapsed = max(time.monotonic() - started, 1e-9)
    p50 = _percentile(latencies, 0.5)
    p95 = _percentile(latencies, 0.95)
    return Level(
        concurrency=concurrency,
        requests=counts["requests"],
        errors=counts["errors"],
        texts=counts["texts"],
        seconds=round(elapsed, 3),
        texts_per_second=round(counts["texts"] / elapsed, 2),
        p50_ms=None if p50 is None else round(p50 * 1000, 2),
        p95_ms=None if p95 is None else round(p95 * 1000, 2),
        queue_depth=round(sum(depths) / len(depths), 2) if depths else None,
    )


def _knee(bench: ReplicaBench) -> None:
    usable = [lv for lv in bench.levels if lv.texts > 0]
    if not usable:
        bench.error = bench.error or "no sub-batch succeeded"
        return
    best = max(lv.texts_per_second for lv in usable)
    knee = next(lv for lv in usable if lv.texts_per_second >= KNEE_SHARE * best)
    bench.knee = knee.concurrency
    bench.capacity = knee.texts_per_second
    bench.p50_ms_at_knee = knee.p50_ms
    bench.queue_depth_at_knee = knee.queue_depth


def suggest(
    replicas: list[ReplicaBench],
) -> tuple[dict[str, float], dict[str, int], int | None]:
    """Weights (slowest measured replica = 1), tiers, and the HPA queue-depth target."""
    measured = [r for r in replicas if r.capacity > 0]
    if not measured:
        return {}, {}, None
    slowest = min(r.capacity for r in measured)
    fastest = max(r.capacity for r in measured)
    weights = {r.url: round(r.capacity / slowest, 2) for r in measured}
    tiers = {r.url: 0 if r.capacity >= TIER_SHARE * fastest else 1 for r in measured}
    first = [r for r in measured if tiers[r.url] == 0]
    depths = [r.queue_depth_at_knee for r in first if r.queue_depth_at_knee is not None]
    if depths:
        target = max(1, round(sum(depths) / len(depths)))
    else:  # no queue-depth header (not our worker): the knee's concurrency, less one
        target = max(1, round(sum((r.knee or 1) for r in first) / len(first)) - 1)
    return weights, tiers, target


async def _bench_replica(
    http: httpx.AsyncClient,
    url: str,
    *,
    make_body: Callable[[list[str]], dict[str, Any]],
    path: str,
    batches: list[list[str]],
    ramp: list[int],
    seconds: float,
    max_requests: int,
    tick: Callable[[str], None],
) -> ReplicaBench:
    bench = ReplicaBench(url=url)
    # Warm up: the first requests pay for connections and lazy initialisation.
    await _level(http, url, make_body, path, batches, 1, 0.0, 2)
    best = 0.0
    for concurrency in ramp:
        level = await _level(
            http, url, make_body, path, batches, concurrency, seconds, max_requests
        )
        bench.levels.append(level)
        tick(f"{url} c={concurrency}: {level.texts_per_second:.0f} texts/s")
        if level.texts == 0 and level.errors:
            bench.error = f"every sub-batch failed at concurrency {concurrency}"
            break
        best = max(best, level.texts_per_second)
    _knee(bench)
    return bench


def bench_replicas(
    urls: list[str],
    *,
    texts: list[str],
    batch_size: int = 16,
    ramp: list[int] | None = None,
    seconds: float = 2.0,
    max_requests: int = 2000,
    api: str = "tei",
    model: str | None = None,
    api_key: str | None = None,
    timeout: float = 30.0,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Ramp every replica in turn and draw the suggestions; bounded by
    ``len(urls) * len(ramp)`` levels of at most ``seconds`` and ``max_requests`` each."""
    ramp = ramp or [1, 2, 4, 8, 16]
    if batch_size < 1 or not texts or seconds <= 0 or any(c < 1 for c in ramp):
        raise ValueError("batch size, texts, seconds and every concurrency must be positive")
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    if api == "openai":
        path = "/v1/embeddings"

        def make_body(batch: list[str]) -> dict[str, Any]:
            body: dict[str, Any] = {"input": batch, "encoding_format": "float"}
            if model:
                body["model"] = model
            return body
    else:
        path = "/embed"

        def make_body(batch: list[str]) -> dict[str, Any]:
            return {"inputs": batch, "truncate": True}

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    tick = progress or (lambda _msg: None)

    async def main() -> list[ReplicaBench]:
        limits = httpx.Limits(max_connections=max(ramp) + 4)
        async with httpx.AsyncClient(timeout=timeout, headers=headers, limits=limits) as http:
            return [
                await _bench_replica(
                    http,
                    url.rstrip("/"),
                    make_body=make_body,
                    path=path,
                    batches=batches,
                    ramp=ramp,
                    seconds=seconds,
                    max_requests=max_requests,
                    tick=tick,
                )
                for url in urls
            ]

    replicas = anyio.run(main)
    weights, tiers, target = suggest(replicas)
    return BenchReport(replicas, batch_size, weights, tiers, target)


def format_report(report: BenchReport) -> str:
    """The per-backend table (fastest first), the latency curve and the suggestions."""
    lines = []
    ranked = sorted(report.replicas, key=lambda r: -r.capacity)
    head = (
        "replica",
        "capacity texts/s",
        "knee c",
        "p50 ms @knee",
        "queue @knee",
        "weight",
        "tier",
    )
    rows = [head]
    for r in ranked:
        rows.append(
            (
                r.url,
                f"{r.capacity:.0f}" if r.capacity else "-",
                str(r.knee or "-"),
                f"{r.p50_ms_at_knee:.0f}" if r.p50_ms_at_knee is not None else "-",
                f"{r.queue_depth_at_knee:.1f}" if r.queue_depth_at_knee is not None else "-",
                f"{report.weights[r.url]:g}" if r.url in report.weights else "-",
                str(report.tiers.get(r.url, "-")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.append("")
    lines.append(f"latency curve (sub-batches of {report.batch_size} texts):")
    for r in ranked:
        curve = ", ".join(
            f"c={lv.concurrency}: {lv.texts_per_second:.0f}/s p50 {lv.p50_ms or 0:.0f} ms"
            + (f" ({lv.errors} errors)" if lv.errors else "")
            for lv in r.levels
        )
        lines.append(f"  {r.url}: {curve}")
        if r.error:
            lines.append(f"  {r.url}: FAILED: {r.error}")
    lines.append("")
    if report.weights:
        backends = ", ".join(
            f'Backend("{url}", weight={w:g}, tier={report.tiers[url]})'
            for url, w in sorted(report.weights.items(), key=lambda kv: -kv[1])
        )
        lines.append(f"suggested backends: [{backends}]")
        if len(set(report.tiers.values())) > 1:
            lines.append("suggested balancer: GpuPriority() (tier 1 only takes spill-over)")
        lines.append(
            f"suggested HPA target: embedbalance_worker_queue_depth averageValue "
            f'"{report.hpa_queue_depth}" (deploy/kubernetes/hpa-queue-depth.yaml)'
        )
    return "\n".join(lines)


def plot(report: BenchReport, path: str) -> None:
    """Throughput and p50 latency against concurrency, one line per replica (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for r in report.replicas:
        xs = [lv.concurrency for lv in r.levels]
        ax1.plot(xs, [lv.texts_per_second for lv in r.levels], marker="o", label=r.url)
        ax2.plot(xs, [lv.p50_ms or float("nan") for lv in r.levels], marker="o", label=r.url)
        if r.knee:
            ax1.axvline(r.knee, linestyle=":", alpha=0.4)
    for ax, label in ((ax1, "texts/s"), (ax2, "p50 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent sub-batches")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    fig.suptitle(f"embedbalance bench: sub-batches of {report.batch_size} texts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _progress(enabled: bool | None, total: int) -> tuple[Callable[[str], None], Callable[[], None]]:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return (lambda _msg: None), (lambda: None)
    try:
        tqdm = importlib.import_module("tqdm").tqdm
    except ImportError:
        done = [0]

        def line(msg: str) -> None:
            done[0] += 1
            print(f"[{done[0]}/{total}] {msg}", file=sys.stderr, flush=True)

        return line, (lambda: None)
    bar = tqdm(total=total, file=sys.stderr, unit="level")

    def tick(msg: str) -> None:
        bar.set_postfix_str(msg, refresh=False)
        bar.update(1)

    return tick, bar.close


def run_bench_command(args: argparse.Namespace) -> int:
    """``embedbalance bench``: print the table (or JSON), optionally plot; exit 1 if a
    replica could not be measured."""
    try:
        ramp = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    except ValueError:
        print(
            f"embedbalance bench: --concurrency: not a list of integers: {args.concurrency!r}",
            file=sys.stderr,
        )
        return USAGE
    if args.texts:
        texts = [t for t in Path(args.texts).read_text().splitlines() if t.strip()]
    else:
        texts = builtin_corpus()
    tick, close = _progress(args.progress, len(args.urls) * len(ramp))
    try:
        report = bench_replicas(
            list(args.urls),
            texts=texts,
            batch_size=args.batch_size,
            ramp=ramp,
            seconds=args.level_seconds,
            max_requests=args.max_requests,
            api=args.api,
            model=args.model,
            api_key=args.api_key,
            timeout=args.timeout,
            progress=tick,
        )
    except ValueError as exc:
        print(f"embedbalance bench: {exc}", file=sys.stderr)
        return USAGE
    finally:
        close()
    if args.plot:
        plot(report, args.plot)
    if args.json:
        json.dump(report.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    return OK if all(r.capacity > 0 and not r.error for r in report.replicas) else FAILED

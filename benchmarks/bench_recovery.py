"""Degrade and recover on a manual clock: the real pool and balancers, simulated servers.

Why beside ``bench_balance.py``: there, the share a recovered backend gets in the first
2 s hangs on when its last slow-spell request happens to finish — one draw per run, and
the CPU's noise on top. Here the same scenario (four equal 8-slot backends, 100 ms mean
service, cv 0.3, open loop; one backend 8x slower from 4 s to 9 s) runs on
``tests/core/_sim.py``'s discrete-event driver over many seeds, with no network and no
contention, so a change to the balancer shows as a distribution, not an anecdote. The
transport (hedging) is not simulated: these are the balancer's own decisions.

Run: ``python benchmarks/bench_recovery.py`` (seconds; ``nox -s bench -- recovery``).
Prints, per load, balancer and whether answers carry the worker's load headers
(``X-Queue-Depth``/``X-In-Flight``, as over real sockets; the default balancer reads
them), the degraded backend's share per phase (seed 1), the median over ``--seeds``
seeds of the run's p99, the mean and minimum of its share in the first 2 s after
recovery as a fraction of its fair share, and how far apart the four identical
backends' shares are before the slowdown (max/min); writes the table to
``bench-results/recovery.md``.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.core._sim import open_loop, shares, spell

import embedbalance as eb

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench-results"

BALANCERS: dict[str, Callable[[], eb.Balancer]] = {
    "LeastConnections": eb.LeastConnections,
    "PeakEwma": eb.PeakEwma,
    "ShortestExpectedDelay": eb.ShortestExpectedDelay,
}
SLOW_FROM, SLOW_TO = 4.0, 9.0
PHASES = {
    "before": (1.0, SLOW_FROM),
    "during": (SLOW_FROM, SLOW_TO),
    "after 0-2 s": (SLOW_TO, SLOW_TO + 2.0),
    "after 2-5 s": (SLOW_TO + 2.0, SLOW_TO + 5.0),
}


def run(balancer: str, rho: float, seed: int, hints: bool = False) -> dict[str, float]:
    """One run: the degraded backend's share per phase, and the whole run's p99 (s);
    with ``hints``, every answer carries the worker's load headers (queue depth and
    requests in flight), as our worker and the loopback benchmark's servers send."""
    clock = eb.ManualClock(1000.0)
    pool = eb.BackendPool(
        [f"http://b{i}.test" for i in range(4)],
        balancer=BALANCERS[balancer](),
        clock=clock,
        rng=random.Random(seed),
    )
    start = clock()
    rate = rho * 320.0
    records = open_loop(
        pool,
        clock,
        slots=[8] * 4,
        service=spell(start, slow_from=SLOW_FROM, slow_to=SLOW_TO),
        rate=rate,
        arrivals=int(rate * (SLOW_TO + 5.0)),
        seed=seed,
        hints=hints,
    )
    out = {}
    for name, (a, b) in PHASES.items():
        out[name] = shares([r for r in records if start + a <= r.at < start + b], 4)[0]
    a, b = PHASES["before"]
    before = shares([r for r in records if start + a <= r.at < start + b], 4)
    out["spread"] = max(before) / min(before) if min(before) > 0 else math.inf
    lat = sorted(r.latency for r in records if r.at >= start + 1.0)
    out["p99"] = lat[int(0.99 * len(lat))]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--out", type=Path, default=RESULTS / "recovery.md")
    args = parser.parse_args()
    lines = [
        "| load | headers | balancer | before | during | after 0-2 s | after 2-5 s "
        f"| p99, median of {args.seeds} seeds "
        f"| after 0-2 s / fair, {args.seeds} seeds: mean (min) "
        "| before: max/min share of the 4, mean (max) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines))
    for rho in (0.5, 0.7, 0.85):
        for hints in (False, True):
            for name in BALANCERS:
                runs = [run(name, rho, s, hints) for s in range(1, args.seeds + 1)]
                first = runs[0]
                fair = [r["after 0-2 s"] / 0.25 for r in runs]
                spread = [r["spread"] for r in runs]
                p99 = statistics.median(r["p99"] for r in runs)
                cells = " | ".join(f"{100 * first[p]:.1f}%" for p in PHASES)
                lines.append(
                    f"| {rho} | {'worker' if hints else 'none'} | {name} | {cells} "
                    f"| {1000 * p99:.0f} ms "
                    f"| {statistics.mean(fair):.2f} ({min(fair):.2f}) "
                    f"| {statistics.mean(spread):.2f} ({max(spread):.2f}) |"
                )
                print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# bench_recovery\n\n`python benchmarks/bench_recovery.py`\n\n" + "\n".join(lines) + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

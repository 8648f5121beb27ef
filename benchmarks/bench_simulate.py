"""Scale simulation: p99 per balancer against a JSQ oracle, and pick cost, 10 to 10,000
backends.

Why: the loopback benchmark stops at four replicas; this shows whether each balancer
keeps finding the fast replicas as the pool grows, and what a pick costs in Python at
each size (the real pool and balancers, a manual clock, seeded randomness; see
``benchmarks/simulate.py`` for the model).

Each size runs for at least ``--seconds`` of simulated traffic (2 s; 0.5 s with
``--quick``) and the first half is not measured: a balancer that learns which replicas
are slow needs answers from them, and one slow answer takes 300 ms here. A fixed request
count (``--seconds 0``: 20,000, or 10 per backend, with the first 20% unmeasured) gives
a 10,000-backend pool 0.1 s of traffic — shorter than one slow service time, so every
slow replica is still unmeasured when the run ends and its first request lands in the
tail; the oracle knows every rate from the start.

Run: ``python benchmarks/bench_simulate.py`` (about 10 minutes on 2 cores, most of it
the oracle at 10,000 backends), ``--quick`` (under a minute). Writes
``bench-results/simulate.json`` and ``.md``; ``--img-dir docs/img`` also redraws the
documentation's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import attrs

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from simulate import (  # noqa: E402
    BALANCERS,
    FULL_SCAN,
    ORACLE,
    Topology,
    pick_cost,
    simulate,
    sizes_for,
)

RESULTS = HERE.parent / "bench-results"
#: The library's default balancer, the one the goal is about.
DEFAULT = "ShortestExpectedDelay"


def _ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x * 1000:.0f}" if x < 10 else f"{x:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rho", type=float, default=0.8, help="offered load / capacity")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--img-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--balancers", default=None, help="comma-separated (default: all)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="simulated seconds of traffic at least, the first half unmeasured "
        "(default 2, 0.5 with --quick; 0: a fixed request count)",
    )
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 2.0)
    warmup = 0.5 if seconds > 0 else 0.2
    balancers = tuple(args.balancers.split(",")) if args.balancers else BALANCERS
    for name in balancers:
        if name not in BALANCERS:
            parser.error(f"unknown balancer {name!r}; known: {', '.join(BALANCERS)}")
    sizes = sizes_for(args.quick)
    scan_limit = 100 if args.quick else 1000
    started = time.monotonic()
    sim: dict[str, dict[int, dict[str, Any]]] = {}
    names = (ORACLE, *balancers)
    for n in sizes:
        topo = Topology.mixed(n)
        requests = max(
            10_000 if args.quick else 20_000, 10 * n, int(args.rho * topo.capacity * seconds)
        )
        for name in names:
            if name in FULL_SCAN and n > scan_limit:
                continue
            r = simulate(
                name, topo, requests=requests, rho=args.rho, seed=args.seed, warmup_share=warmup
            )
            sim.setdefault(name, {})[n] = attrs.asdict(r)
            print(
                f"  n={n:6d} {name:24s} p50 {r.p50 * 1000:7.0f} ms  p99 {r.p99 * 1000:9.0f} ms"
                f"  slow share {100 * r.slow_share:5.2f}%  ({r.wall_s:.1f}s)",
                flush=True,
            )
    cost: dict[str, dict[int, float]] = {}
    for name in balancers:
        for n in sizes:
            cost.setdefault(name, {})[n] = pick_cost(name, n, budget_s=0.3 if args.quick else 0.6)
    elapsed = time.monotonic() - started

    head = "| balancer | " + " | ".join(f"n={n}" for n in sizes) + " |\n"
    sep = "|---|" + "---:|" * len(sizes) + "\n"
    p99_rows = []
    for name in names:
        cells = []
        for n in sizes:
            row = sim.get(name, {}).get(n)
            if row is None:
                cells.append("—")
                continue
            ratio = row["p99"] / sim[ORACLE][n]["p99"]
            cells.append(f"{_ms(row['p99'])} ({ratio:.1f}x)" if name != ORACLE else _ms(row["p99"]))
        p99_rows.append(f"| {name} | " + " | ".join(cells) + " |")
    cost_rows = [
        f"| {name} | " + " | ".join(f"{cost[name][n] * 1e6:.1f}" for n in sizes) + " |"
        for name in balancers
    ]
    command = "python benchmarks/bench_simulate.py " + " ".join(argv or sys.argv[1:])
    md = (
        f"# bench_simulate\n\n`{command.strip()}` — rho {args.rho}, seed {args.seed}, "
        f"load average {os.getloadavg()[0]:.2f}, {elapsed:.0f} s\n\n"
        "p99 response time in ms (× the JSQ oracle's); — = not simulated (full scan too slow "
        "at that size in a bounded run)\n\n" + head + sep + "\n".join(p99_rows) + "\n\n"
        "Pick cost, µs per acquire + release\n\n" + head + sep + "\n".join(cost_rows) + "\n"
    )
    goals = []
    if DEFAULT in sim:
        for n in sizes:
            ratio = sim[DEFAULT][n]["p99"] / sim[ORACLE][n]["p99"]
            verdict = "met" if ratio <= 1.1 else "MISSED"
            goals.append(
                f"- n={n}: {DEFAULT} p99 {ratio:.2f}x the oracle's (goal <= 1.1): {verdict}"
            )
        md += "\nGoal: the default's p99 within 1.1x the oracle's\n\n" + "\n".join(goals) + "\n"
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "simulate.json").write_text(
        json.dumps(
            {"command": command, "rho": args.rho, "seed": args.seed, "sim": sim, "pick_cost": cost},
            indent=1,
        )
    )
    (args.out / "simulate.md").write_text(md)
    for folder in [args.out] + ([args.img_dir] if args.img_dir else []):
        plot(sim, cost, sizes, folder)
    return 0


def plot(
    sim: dict[str, dict[int, dict[str, Any]]],
    cost: dict[str, dict[int, float]],
    sizes: tuple[int, ...] | list[int] | Any,
    out: Path,
) -> None:
    """p99 against n per balancer (oracle dashed), and pick cost against n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rows in sim.items():
        ns = sorted(rows)
        style = "k--" if name == ORACLE else "o-"
        a.plot(ns, [rows[n]["p99"] for n in ns], style, label=name)
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("backends")
    a.set_ylabel("p99 response time, s (log)")
    a.set_title("p99 at 80% load, 1 in 4 backends slow")
    a.legend(fontsize=7)
    for name, rows in cost.items():
        ns = sorted(rows)
        b.plot(ns, [rows[n] * 1e6 for n in ns], "o-", label=name)
    b.set_xscale("log")
    b.set_yscale("log")
    b.set_xlabel("backends")
    b.set_ylabel("µs per acquire + release (log)")
    b.set_title("pick cost")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "bench-sim.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

"""Client-side cost of balancing: CPU per request through ``BalancingTransport`` vs
plain httpx to the same single backend, sync and async, measured in one run.

The backend is a separate process (tests/helpers/control_server.py, instant answers),
so ``time.process_time()`` of this process is the client's CPU alone. Rounds
alternate between the two clients and the figure is the median over rounds, which
keeps drift in machine load from favouring either side.

Run: python benchmarks/bench_transport.py [--requests N] [--rounds R]
Writes bench-results/transport.json and bench-results/transport.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from control_proc import ControlServer  # noqa: E402

import embedbalance as eb  # noqa: E402

BODY = {"inputs": ["the quick brown fox"]}


def _sync_round(client: httpx.Client, path: str, n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        client.post(path, json=BODY).raise_for_status()
    return (time.process_time() - start) / n


async def _async_round(client: httpx.AsyncClient, path: str, n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        (await client.post(path, json=BODY)).raise_for_status()
    return (time.process_time() - start) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    server = ControlServer()
    rows: dict[str, list[float]] = {
        "plain sync": [],
        "balanced sync": [],
        "balanced sync, deadline": [],
        "plain async": [],
        "balanced async": [],
        "balanced async, deadline": [],
    }
    try:
        plain = httpx.Client(base_url=server.url)
        balanced = httpx.Client(
            transport=eb.BalancingTransport([server.url], health_check=None),
            base_url="http://embeddings",
        )
        # A whole-request deadline (what EmbeddingClient's timeout sets) races each
        # attempt on a runner thread: the price of a real deadline in sync code.
        deadline = httpx.Client(
            transport=eb.BalancingTransport([server.url], health_check=None, total_timeout=30),
            base_url="http://embeddings",
        )
        for client in (plain, balanced, deadline):
            _sync_round(client, "/embed", 200)  # warm up connections and code paths
        for _ in range(args.rounds):
            rows["plain sync"].append(_sync_round(plain, "/embed", args.requests))
            rows["balanced sync"].append(_sync_round(balanced, "/embed", args.requests))
            rows["balanced sync, deadline"].append(_sync_round(deadline, "/embed", args.requests))
        plain.close()
        balanced.close()
        deadline.close()

        async def run_async() -> None:
            async with (
                httpx.AsyncClient(base_url=server.url) as aplain,
                httpx.AsyncClient(
                    transport=eb.AsyncBalancingTransport([server.url], health_check=None),
                    base_url="http://embeddings",
                ) as abalanced,
                httpx.AsyncClient(
                    transport=eb.AsyncBalancingTransport(
                        [server.url], health_check=None, total_timeout=30
                    ),
                    base_url="http://embeddings",
                ) as adeadline,
            ):
                for client in (aplain, abalanced, adeadline):
                    await _async_round(client, "/embed", 200)
                for _ in range(args.rounds):
                    rows["plain async"].append(await _async_round(aplain, "/embed", args.requests))
                    rows["balanced async"].append(
                        await _async_round(abalanced, "/embed", args.requests)
                    )
                    rows["balanced async, deadline"].append(
                        await _async_round(adeadline, "/embed", args.requests)
                    )

        asyncio.run(run_async())
    finally:
        server.stop()

    med = {k: statistics.median(v) * 1e6 for k, v in rows.items()}
    result = {
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "median_cpu_us_per_request": med,
        "ratio_sync": med["balanced sync"] / med["plain sync"],
        "ratio_async": med["balanced async"] / med["plain async"],
        "ratio_sync_deadline": med["balanced sync, deadline"] / med["plain sync"],
        "ratio_async_deadline": med["balanced async, deadline"] / med["plain async"],
        "rounds_us": {k: [x * 1e6 for x in v] for k, v in rows.items()},
    }
    lines = [
        "| client | CPU µs / request (median) | ratio to plain httpx |",
        "|---|---:|---:|",
        f"| httpx.Client | {med['plain sync']:.1f} | 1.00 |",
        f"| httpx.Client + BalancingTransport | {med['balanced sync']:.1f} | {result['ratio_sync']:.3f} |",
        f"| ... with `total_timeout` (raced attempt) | {med['balanced sync, deadline']:.1f} | {result['ratio_sync_deadline']:.3f} |",
        f"| httpx.AsyncClient | {med['plain async']:.1f} | 1.00 |",
        f"| httpx.AsyncClient + AsyncBalancingTransport | {med['balanced async']:.1f} | {result['ratio_async']:.3f} |",
        f"| ... with `total_timeout` (raced attempt) | {med['balanced async, deadline']:.1f} | {result['ratio_async_deadline']:.3f} |",
    ]
    table = "\n".join(lines)
    print(table)
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "transport.json").write_text(json.dumps(result, indent=2))
    (out / "transport.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

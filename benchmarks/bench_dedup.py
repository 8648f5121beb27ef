"""Not embedding the same text twice: an ingestion run whose corpus is 30% duplicates,
with within-call dedup and an ``EmbeddingCache`` against the same run with both off.

The corpus imitates RAG ingestion: ``--calls`` sequential ``embed()`` calls of
``--texts`` chunks each (random sentences of 30-90 words, seeded); half the duplicates
repeat a chunk of the same call (boilerplate inside a document set), half repeat a
chunk of the previous call (unchanged documents re-ingested). The duplicate share is
counted and printed, not assumed.

Two real workers on 127.0.0.1 (``--torch-threads 1``). Rounds alternate between the
baseline (``dedupe=False``, no cache: every text sent) and the saving client (default
dedup plus a fresh ``EmbeddingCache(max_bytes=--max-bytes)`` per round), so drift in
machine load favours neither; the figure is the median over rounds. Both runs' rows are
compared: the saving client must return the same matrix, row for row.

Memory: the cache's own byte count is sampled after every call (it may never exceed the
bound), and one extra, untimed pass runs under ``tracemalloc`` to measure what
``embedbalance/cache.py`` actually holds at the end, against the same bound.

Goal: saving run <= 0.75x the baseline's wall time; cache memory <= max_bytes.

Run: python benchmarks/bench_dedup.py [--calls 6] [--texts 80] [--rounds 3]
Writes bench-results/dedup.json and bench-results/dedup.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
from tests.helpers.worker_proc import start_workers  # noqa: E402

from embedbalance import EmbeddingCache, EmbeddingClient  # noqa: E402

WORDS = [
    "balance",
    "replica",
    "queue",
    "token",
    "batch",
    "vector",
    "model",
    "server",
    "request",
    "latency",
    "throughput",
    "cluster",
    "network",
    "memory",
    "signal",
    "health",
    "worker",
    "client",
    "shard",
    "region",
    "cache",
    "index",
    "search",
    "river",
    "mountain",
    "window",
    "garden",
    "harbour",
    "lantern",
    "meadow",
    "orchard",
    "paper",
    "pencil",
    "silver",
    "thunder",
    "valley",
    "winter",
    "yellow",
    "anchor",
    "bridge",
    "candle",
    "desert",
    "engine",
    "forest",
    "glacier",
]
GOAL_RATIO = 0.75


def make_corpus(calls: int, per_call: int, dup_share: float, seed: int) -> list[list[str]]:
    """``calls`` lists of ``per_call`` texts, ``dup_share`` of them repeats: half of a
    text of the same call, half of a text of the previous call (the first call's all
    come from itself)."""
    rng = random.Random(seed)
    serial = 0

    def fresh() -> str:
        nonlocal serial
        serial += 1
        words = rng.choices(WORDS, k=rng.randint(30, 90))
        return f"chunk {serial}: " + " ".join(words) + "."

    corpus: list[list[str]] = []
    dups = round(per_call * dup_share)
    for c in range(calls):
        across = 0 if c == 0 else dups // 2
        within = dups - across
        texts = [fresh() for _ in range(per_call - dups)]
        texts += rng.choices(texts, k=within)
        if across:
            previous = list(dict.fromkeys(corpus[-1]))
            texts += rng.sample(previous, across)
        rng.shuffle(texts)
        corpus.append(texts)
    return corpus


def duplicate_share(corpus: list[list[str]]) -> tuple[float, float, float]:
    """Of all texts: the share repeated within their call, repeated from an earlier
    call, and the total share that needs no embedding."""
    seen: set[str] = set()
    total = within = across = 0
    for texts in corpus:
        in_call: set[str] = set()
        for t in texts:
            total += 1
            if t in in_call:
                within += 1
            elif t in seen:
                across += 1
            in_call.add(t)
        seen |= in_call
    return within / total, across / total, (within + across) / total


def run(
    urls: list[str], corpus: list[list[str]], *, saving: bool, max_bytes: int
) -> dict[str, Any]:
    cache = EmbeddingCache(max_bytes=max_bytes) if saving else None
    peak_bytes = 0
    parts = []
    with EmbeddingClient(
        urls, batch_size=16, truncate=True, dedupe=saving, cache=cache, health_check=None
    ) as client:
        client.embed(["warm up"])  # /info and connections, outside the timed part
        before = client.stats()
        start = time.perf_counter()
        for texts in corpus:
            parts.append(client.embed(texts))
            if cache is not None:
                peak_bytes = max(peak_bytes, cache.stats().bytes)
        seconds = time.perf_counter() - start
        after = client.stats()
    summary: dict[str, Any] = {
        "seconds": seconds,
        "rows": np.vstack(parts),
        "duplicates": after.duplicates - before.duplicates,
        "cache": None,
    }
    if after.cache is not None and before.cache is not None:
        summary["cache"] = {
            "hits": after.cache.hits - before.cache.hits,
            "misses": after.cache.misses - before.cache.misses,
            "evictions": after.cache.evictions - before.cache.evictions,
            "entries": after.cache.entries,
            "bytes": after.cache.bytes,
            "peak_bytes": peak_bytes,
            "max_bytes": after.cache.max_bytes,
        }
    return summary


def traced_cache_memory(urls: list[str], corpus: list[list[str]], max_bytes: int) -> int:
    """Bytes allocated in embedbalance/cache.py and still held after a saving run."""
    tracemalloc.start()
    try:
        run(urls, corpus, saving=True, max_bytes=max_bytes)
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    only = snapshot.filter_traces([tracemalloc.Filter(True, "*embedbalance/cache.py")])
    return sum(stat.size for stat in only.statistics("filename"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--texts", type=int, default=80, help="texts per call")
    parser.add_argument("--dup-share", type=float, default=0.30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-bytes", type=int, default=512 * 1024)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if not (1 <= args.calls <= 100 and 1 <= args.texts <= 2000 and 1 <= args.rounds <= 10):
        parser.error("keep --calls <= 100, --texts <= 2000 and --rounds <= 10")

    corpus = make_corpus(args.calls, args.texts, args.dup_share, args.seed)
    within, across, share = duplicate_share(corpus)
    total = sum(map(len, corpus))
    print(
        f"corpus: {args.calls} calls x {args.texts} texts = {total}; duplicates "
        f"{share:.1%} ({within:.1%} within a call, {across:.1%} across calls)"
    )
    workers = start_workers(2, "--torch-threads", "1", "--max-wait-ms", "2")
    try:
        urls = [w.url for w in workers]
        base_times: list[float] = []
        save_times: list[float] = []
        last: dict[str, Any] = {}
        for r in range(args.rounds):
            base = run(urls, corpus, saving=False, max_bytes=args.max_bytes)
            save = run(urls, corpus, saving=True, max_bytes=args.max_bytes)
            if not np.array_equal(base["rows"], save["rows"]):
                worst = float(np.abs(base["rows"] - save["rows"]).max())
                # Batching differs between the runs, and a forward pass's padding can
                # move the last bits; anything beyond that is a wrong row.
                if worst > 1e-5:
                    print(f"round {r}: rows differ by {worst}: FAIL")
                    return 1
            base_times.append(base["seconds"])
            save_times.append(save["seconds"])
            last = save
            print(
                f"round {r}: baseline {base['seconds']:.2f} s, dedup+cache "
                f"{save['seconds']:.2f} s ({save['seconds'] / base['seconds']:.2f}x)"
            )
        traced = traced_cache_memory(urls, corpus, args.max_bytes)
    finally:
        for w in workers:
            w.stop()

    base_s, save_s = statistics.median(base_times), statistics.median(save_times)
    ratio = save_s / base_s
    cache = last["cache"]
    memory_ok = cache["peak_bytes"] <= args.max_bytes and traced <= args.max_bytes
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared, contended)",
        "python": platform.python_version(),
        "calls": args.calls,
        "texts_per_call": args.texts,
        "texts": total,
        "duplicate_share": round(share, 4),
        "within_call_share": round(within, 4),
        "across_call_share": round(across, 4),
        "rounds": args.rounds,
        "baseline_seconds": [round(t, 3) for t in base_times],
        "saving_seconds": [round(t, 3) for t in save_times],
        "baseline_median_s": round(base_s, 3),
        "saving_median_s": round(save_s, 3),
        "ratio": round(ratio, 3),
        "goal_ratio": GOAL_RATIO,
        "ratio_met": ratio <= GOAL_RATIO,
        "texts_sent_saving": cache["misses"],
        "duplicates_folded": last["duplicates"],
        "cache": cache,
        "traced_cache_bytes": traced,
        "memory_within_bound": memory_ok,
    }
    print(
        f"median: baseline {base_s:.2f} s, dedup+cache {save_s:.2f} s -> {ratio:.2f}x "
        f"(goal <= {GOAL_RATIO}: {'met' if ratio <= GOAL_RATIO else 'MISSED'})"
    )
    print(
        f"texts sent: {cache['misses']} of {total}; folded within calls "
        f"{last['duplicates']}, cache hits {cache['hits']}, evictions {cache['evictions']}"
    )
    print(
        f"cache memory: peak counted {cache['peak_bytes']} B, tracemalloc {traced} B, "
        f"bound {args.max_bytes} B ({'within' if memory_ok else 'OVER'})"
    )
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "dedup.json").write_text(json.dumps(result, indent=2))
    md = [
        "| run | median s | rounds (s) |",
        "|---|---:|---|",
        f"| baseline (`dedupe=False`, no cache) | {base_s:.2f} | "
        + ", ".join(f"{t:.2f}" for t in base_times)
        + " |",
        f"| dedup + `EmbeddingCache` | {save_s:.2f} | "
        + ", ".join(f"{t:.2f}" for t in save_times)
        + " |",
        "",
        f"ratio {ratio:.2f} (goal <= {GOAL_RATIO}); {total} texts, {share:.1%} duplicates; "
        f"sent {cache['misses']}; cache peak {cache['peak_bytes']} B, tracemalloc "
        f"{traced} B, bound {args.max_bytes} B",
    ]
    (out / "dedup.md").write_text("\n".join(md) + "\n")
    return 0 if ratio <= GOAL_RATIO and memory_ok else 2


if __name__ == "__main__":
    sys.exit(main())

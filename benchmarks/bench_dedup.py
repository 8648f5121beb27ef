"""Not embedding the same text twice: an ingestion run whose corpus is 30% duplicates,
with within-call dedup and an ``EmbeddingCache`` against the same run with both off.

The corpus imitates RAG ingestion: ``--calls`` sequential ``embed()`` calls of
``--texts`` chunks each (random sentences of 30-90 words, seeded); half the duplicates
repeat a chunk of the same call (boilerplate inside a document set), half repeat a
chunk of the previous call (unchanged documents re-ingested). The duplicate share is
counted and printed, not assumed.

Two real workers on 127.0.0.1 (``--torch-threads 1``). Each round runs the baseline
(``dedupe=False``, no cache: every text sent) and the saving client (default dedup plus
a fresh ``EmbeddingCache(max_bytes=--max-bytes)``) side by side, call by call, which
one goes first alternating, so bursts of load from elsewhere land on both; the figure
is the median over rounds of each round's ratio of summed call times (the ratio of the
two medians is printed too). Both sides' rows are compared: the saving client must
return the same matrix, row for row.

The machine is shared, so wall time is noisy: the workers' CPU seconds during the timed
part (``/proc/<pid>/stat``) are recorded too, a figure that other load barely moves,
and each round's ratio is printed beside the medians.

Memory: the cache's own byte count is sampled after every call (it may never exceed the
bound), and one extra, untimed pass runs under ``tracemalloc`` to measure what
``embedbalance/cache.py`` actually holds at the end, against the same bound.

Goal: saving run <= 0.75x the baseline's wall time; cache memory <= max_bytes.

Run: python benchmarks/bench_dedup.py [--calls 6] [--texts 80] [--rounds 5]
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


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used (Linux ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / tick


class Side:
    """One client of the comparison, with its own timers: ``saving`` adds within-call
    dedup and a fresh cache; the baseline sends every text."""

    def __init__(self, urls: list[str], *, saving: bool, max_bytes: int, pids: list[int]):
        self.cache = EmbeddingCache(max_bytes=max_bytes) if saving else None
        self.client = EmbeddingClient(
            urls, batch_size=16, truncate=True, dedupe=saving, cache=self.cache, health_check=None
        )
        self.client.embed(["warm up"])  # /info and connections, outside the timed part
        self.before = self.client.stats()
        self.pids = pids
        self.seconds = 0.0
        self.worker_cpu = 0.0
        self.peak_bytes = 0
        self.parts: list[np.ndarray] = []

    def embed(self, texts: list[str]) -> None:
        cpu = cpu_seconds(self.pids)
        start = time.perf_counter()
        self.parts.append(self.client.embed(texts))
        self.seconds += time.perf_counter() - start
        self.worker_cpu += cpu_seconds(self.pids) - cpu
        if self.cache is not None:
            self.peak_bytes = max(self.peak_bytes, self.cache.stats().bytes)

    def close(self) -> dict[str, Any]:
        after = self.client.stats()
        self.client.close()
        before = self.before
        summary: dict[str, Any] = {
            "seconds": self.seconds,
            "worker_cpu": self.worker_cpu,
            "rows": np.vstack(self.parts),
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
                "peak_bytes": self.peak_bytes,
                "max_bytes": after.cache.max_bytes,
            }
        return summary


def paired_round(
    urls: list[str], corpus: list[list[str]], max_bytes: int, pids: list[int], flip: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both clients over the same corpus, call by call, alternating which goes first:
    a burst of load from elsewhere lands on both sides rather than on one run."""
    base = Side(urls, saving=False, max_bytes=max_bytes, pids=pids)
    save = Side(urls, saving=True, max_bytes=max_bytes, pids=pids)
    for c, texts in enumerate(corpus):
        order = (base, save) if (c + flip) % 2 == 0 else (save, base)
        for side in order:
            side.embed(texts)
    return base.close(), save.close()


def traced_cache_memory(urls: list[str], corpus: list[list[str]], max_bytes: int) -> int:
    """Bytes allocated in embedbalance/cache.py and still held (the cache alive) after
    a saving run."""
    tracemalloc.start()
    try:
        side = Side(urls, saving=True, max_bytes=max_bytes, pids=[])
        for texts in corpus:
            side.embed(texts)
        snapshot = tracemalloc.take_snapshot()
        side.close()
    finally:
        tracemalloc.stop()
    only = snapshot.filter_traces([tracemalloc.Filter(True, "*embedbalance/cache.py")])
    return sum(stat.size for stat in only.statistics("filename"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--texts", type=int, default=80, help="texts per call")
    parser.add_argument("--dup-share", type=float, default=0.30)
    parser.add_argument("--rounds", type=int, default=5)
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
        pids = [w.pid for w in workers]
        base_times: list[float] = []
        save_times: list[float] = []
        base_cpu: list[float] = []
        save_cpu: list[float] = []
        last: dict[str, Any] = {}
        for r in range(args.rounds):
            base, save = paired_round(urls, corpus, args.max_bytes, pids, flip=r)
            if not np.array_equal(base["rows"], save["rows"]):
                worst = float(np.abs(base["rows"] - save["rows"]).max())
                # Batching differs between the runs, and a forward pass's padding can
                # move the last bits; anything beyond that is a wrong row.
                if worst > 1e-5:
                    print(f"round {r}: rows differ by {worst}: FAIL")
                    return 1
            base_times.append(base["seconds"])
            save_times.append(save["seconds"])
            base_cpu.append(base["worker_cpu"])
            save_cpu.append(save["worker_cpu"])
            last = save
            print(
                f"round {r}: baseline {base['seconds']:.2f} s, dedup+cache "
                f"{save['seconds']:.2f} s ({save['seconds'] / base['seconds']:.2f}x); "
                f"worker CPU {base['worker_cpu']:.1f} s vs {save['worker_cpu']:.1f} s "
                f"({save['worker_cpu'] / max(base['worker_cpu'], 1e-9):.2f}x)"
            )
        traced = traced_cache_memory(urls, corpus, args.max_bytes)
    finally:
        for w in workers:
            w.stop()

    base_s, save_s = statistics.median(base_times), statistics.median(save_times)
    # The rounds are paired (both sides under the same load), so the headline is the
    # median of each round's own ratio; the ratio of the two medians is reported too.
    round_ratios = [s / b for s, b in zip(save_times, base_times, strict=True)]
    ratio = statistics.median(round_ratios)
    ratio_of_medians = save_s / base_s
    cpu_ratio = statistics.median(save_cpu) / max(statistics.median(base_cpu), 1e-9)
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
        "round_ratios": [round(x, 3) for x in round_ratios],
        "ratio_of_medians": round(ratio_of_medians, 3),
        "baseline_worker_cpu_s": [round(t, 2) for t in base_cpu],
        "saving_worker_cpu_s": [round(t, 2) for t in save_cpu],
        "worker_cpu_ratio": round(cpu_ratio, 3),
        "goal_ratio": GOAL_RATIO,
        "ratio_met": ratio <= GOAL_RATIO,
        "texts_sent_saving": cache["misses"],
        "duplicates_folded": last["duplicates"],
        "cache": cache,
        "traced_cache_bytes": traced,
        "memory_within_bound": memory_ok,
    }
    print(
        f"median: baseline {base_s:.2f} s, dedup+cache {save_s:.2f} s "
        f"({ratio_of_medians:.2f}x); median of paired round ratios {ratio:.2f}x "
        f"(goal <= {GOAL_RATIO}: {'met' if ratio <= GOAL_RATIO else 'MISSED'})"
    )
    print(
        f"worker CPU (median): {statistics.median(base_cpu):.1f} s vs "
        f"{statistics.median(save_cpu):.1f} s -> {cpu_ratio:.2f}x; per-round wall ratios "
        + ", ".join(f"{x:.2f}" for x in round_ratios)
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
        "| run | median wall s | rounds (s) | median worker CPU s |",
        "|---|---:|---|---:|",
        f"| baseline (`dedupe=False`, no cache) | {base_s:.2f} | "
        + ", ".join(f"{t:.2f}" for t in base_times)
        + f" | {statistics.median(base_cpu):.1f} |",
        f"| dedup + `EmbeddingCache` | {save_s:.2f} | "
        + ", ".join(f"{t:.2f}" for t in save_times)
        + f" | {statistics.median(save_cpu):.1f} |",
        "",
        f"wall ratio {ratio:.2f} (median of paired rounds; goal <= {GOAL_RATIO}; ratio of "
        f"medians {ratio_of_medians:.2f}), worker CPU ratio {cpu_ratio:.2f}; "
        f"{total} texts, {share:.1%} duplicates; "
        f"sent {cache['misses']}; cache peak {cache['peak_bytes']} B, tracemalloc "
        f"{traced} B, bound {args.max_bytes} B",
    ]
    (out / "dedup.md").write_text("\n".join(md) + "\n")
    return 0 if ratio <= GOAL_RATIO and memory_ok else 2


if __name__ == "__main__":
    sys.exit(main())

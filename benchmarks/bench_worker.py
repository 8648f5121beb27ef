"""Benchmark the reference worker against the raw model, sentence-transformers and a peer.

Measured in one run, all on 127.0.0.1:
  1. raw forward throughput (texts/s) at the best batch size, short (~12 tokens) and
     medium (~120 tokens) texts, float32 and bfloat16;
  2. the worker under 32 concurrent clients x 1 text and 8 clients x 32 texts, as a ratio
     of (1) and against sentence-transformers ``encode`` on the same texts;
  3. single-client p50 latency minus the raw batch-1 forward time;
  4. a flood: 64 clients sending maximum-size bodies of over-long texts while one client
     sends a valid short request every 200 ms (peak RSS, that client's latencies);
  5. a peer server (infinity-emb) under the same load, when a separate venv provides it
     (``--peer-python PATH``).

Goals (checked and printed): worker >= 0.9x raw on short and medium texts with 32
clients; single-client overhead <= 3 ms; flood peak RSS <= 1.5 GiB with every valid
request answered within 1 s. On a GPU (``--device cuda``) the same run records GPU
figures, with ``--dtype`` float16 or bfloat16 for the worker and the raw forward.

Why a hand-rolled HTTP/1.1 client: on a small machine the load generator shares the CPU
with the server, and a client that parses nothing but the status line and the length
steals the least from what is being measured.

Run: ``python benchmarks/bench_worker.py`` (writes bench-results/worker.json and .md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.helpers.worker_proc import start_worker  # noqa: E402

from embedbalance_worker import EmbeddingModel, WorkerConfig  # noqa: E402
from embedbalance_worker.config import default_model_path  # noqa: E402

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
    "paper",
    "music",
    "light",
    "stone",
    "water",
    "market",
    "story",
    "engine",
]


def make_texts(n: int, words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) + f" {i}." for i in range(n)]


def timed_loop(fn: Any, seconds: float, max_iters: int = 100_000) -> tuple[int, float]:
    """Call fn until `seconds` pass (bounded by max_iters); returns (calls, elapsed)."""
    fn()  # warm
    start = time.perf_counter()
    n = 0
    while n < max_iters and time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n, time.perf_counter() - start


# -- raw model --------------------------------------------------------------------------
def raw_throughput(
    model: EmbeddingModel, texts: list[str], sizes: tuple[int, ...], seconds: float
) -> dict[str, Any]:
    ids = model.tokenize(texts)
    per_size = {}
    for bs in sizes:
        batch = ids[:bs]
        n, el = timed_loop(lambda b=batch: model.forward(b), seconds)
        per_size[bs] = n * bs / el
    best = max(per_size, key=per_size.__getitem__)
    return {"best_batch": best, "texts_per_s": per_size[best], "by_batch": per_size}


def batch1_forward_ms(model: EmbeddingModel, text: str, seconds: float) -> float:
    ids = model.tokenize([text])
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    model.forward(ids)
    while time.perf_counter() < deadline and len(samples) < 2000:
        t = time.perf_counter()
        model.forward(ids)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1000


# -- load generator ---------------------------------------------------------------------
async def _client(
    host: str, port: int, path: str, bodies: list[bytes], stop: float, out: dict[str, Any]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    try:
        while time.perf_counter() < stop:
            body = bodies[i % len(bodies)]
            i += 1
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            t = time.perf_counter()
            writer.write(head + body)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value.strip())
            await reader.readexactly(length)
            elapsed = time.perf_counter() - t
            status = int(status_line.split()[1])
            if status == 200:
                out["ok"] += 1
                out["latencies"].append(elapsed)
            else:
                out["errors"] += 1
    finally:
        writer.close()


async def _load(
    url: str, path: str, bodies_per_client: list[list[bytes]], seconds: float
) -> dict[str, Any]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    out: dict[str, Any] = {"ok": 0, "errors": 0, "latencies": []}
    # warm-up round, not counted
    await asyncio.gather(
        *(
            _client(
                host,
                int(port),
                path,
                b,
                time.perf_counter() + 0.5,
                {"ok": 0, "errors": 0, "latencies": []},
            )
            for b in bodies_per_client
        )
    )
    start = time.perf_counter()
    tasks = [
        asyncio.ensure_future(_client(host, int(port), path, b, start + seconds, out))
        for b in bodies_per_client
    ]
    # Bounded: requests still queued well after the window are abandoned, not awaited.
    _, pending = await asyncio.wait(tasks, timeout=seconds + 15)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    out["abandoned"] = len(pending)
    out["elapsed"] = time.perf_counter() - start
    return out


def run_load(
    url: str,
    path: str,
    key: str,
    texts: list[str],
    clients: int,
    per_request: int,
    seconds: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """`clients` connections each sending `per_request` texts per request, back to back."""
    bodies = []
    for c in range(clients):
        mine = []
        for r in range(8):
            start = ((c * 8 + r) * per_request) % max(1, len(texts) - per_request)
            mine.append(json.dumps({key: texts[start : start + per_request], **extra}).encode())
        bodies.append(mine)
    out = asyncio.run(_load(url, path, bodies, seconds))
    lat = sorted(out["latencies"]) or [float("nan")]
    return {
        "texts_per_s": out["ok"] * per_request / out["elapsed"],
        "requests": out["ok"],
        "errors": out["errors"],
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
    }


def single_client_p50_ms(url: str, path: str, key: str, text: str, seconds: float) -> float:
    out = run_load(url, path, key, [text, text], 1, 1, seconds, {})
    return float(out["p50_ms"])


def _peak_rss_gib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def flood(seconds: float, payload_limit: int = 4 * 1024 * 1024) -> dict[str, Any]:
    """64 clients of maximum-size bodies of over-long texts, one valid probe every 200 ms."""
    import threading

    import httpx

    text = "an over long text that repeats itself " * 420
    body = json.dumps({"inputs": [text] * 256}).encode()
    assert len(body) <= payload_limit
    out: dict[str, Any] = {}
    with start_worker("--payload-limit", str(payload_limit), timeout=120) as worker:
        before = _peak_rss_gib(worker.pid)
        load: dict[str, Any] = {}
        flooder = threading.Thread(
            target=lambda: load.update(
                asyncio.run(_load(worker.url, "/embed", [[body]] * 64, seconds + 1.0))
            ),
            daemon=True,
        )
        flooder.start()
        time.sleep(1.5)
        probes: list[tuple[int, float]] = []
        with httpx.Client(timeout=10) as client:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                t = time.monotonic()
                code = client.post(worker.url + "/embed", json={"inputs": ["valid"]}).status_code
                probes.append((code, time.monotonic() - t))
                time.sleep(max(0.0, 0.2 - (time.monotonic() - t)))
        flooder.join(timeout=seconds + 30)
        lat = sorted(s for _, s in probes)
        out = {
            "flood_requests": load.get("errors", 0) + load.get("ok", 0),
            "flood_accepted": load.get("ok", 0),
            "probes": len(probes),
            "probes_ok": sum(1 for c, _ in probes if c == 200),
            "probe_p50_ms": lat[len(lat) // 2] * 1000 if lat else float("nan"),
            "probe_max_ms": lat[-1] * 1000 if lat else float("nan"),
            "rss_before_gib": before,
            "peak_rss_gib": _peak_rss_gib(worker.pid),
        }
    return out


# -- peer -------------------------------------------------------------------------------
def start_peer(python: str, seconds: float) -> tuple[subprocess.Popen[bytes] | None, str, str]:
    """Start infinity-emb on a free port; returns (process, url, note)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        str(Path(python).with_name("infinity_emb")),
        "v2",
        "--model-id",
        str(default_model_path()),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--no-bettertransformer",
        "--batch-size",
        "64",
    ]
    env = {**os.environ, "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    with Path("bench-results/peer.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    import httpx

    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return (
                None,
                url,
                f"exited with {proc.returncode}: see bench-results/peer.log; cmd: {' '.join(cmd)}",
            )
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url, " ".join(cmd)
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    proc.wait()
    return None, url, f"not healthy within {seconds}s: {' '.join(cmd)}"


# -- report -----------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per load scenario")
    parser.add_argument("--raw-seconds", type=float, default=1.5, help="per raw batch size")
    parser.add_argument("--flood-seconds", type=float, default=8.0)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument(
        "--peer-python",
        default=os.environ.get("PEER_PYTHON", "peer-venv/bin/python"),
        help="interpreter of a separate venv with infinity-emb installed (skipped if absent)",
    )
    args = parser.parse_args()
    out_dir = ROOT / "bench-results"
    out_dir.mkdir(exist_ok=True)
    os.chdir(ROOT)
    import torch

    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "dtype": args.dtype,
            "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        },
        "command": "python " + " ".join(sys.argv),
    }
    texts = {"short": make_texts(512, 8, 1), "medium": make_texts(512, 110, 2)}
    # A CPU's raw optimum is a few rows; a GPU's keeps growing into the hundreds, so a
    # ramp that stopped at 128 would understate the limit the worker is compared with.
    sizes = {
        "short": (4, 8, 16, 32, 64, 128) + ((256, 512) if args.device != "cpu" else ()),
        "medium": (2, 4, 8, 16, 32, 64) + ((128, 256, 512) if args.device != "cpu" else ()),
    }

    print("raw forward ...", flush=True)
    fp32 = EmbeddingModel(WorkerConfig(device=args.device, dtype=args.dtype))
    results["tokens_per_text"] = {
        k: statistics.mean(len(x) for x in fp32.tokenize(v[:64])) for k, v in texts.items()
    }
    raw: dict[str, Any] = {}
    raw["float32"] = {
        kind: raw_throughput(fp32, texts[kind], sizes[kind], args.raw_seconds)
        for kind in ("short", "medium")
    }
    batch1_ms = batch1_forward_ms(fp32, texts["short"][0], 2.0)
    st_model_texts: dict[str, float] = {}
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(default_model_path()), device=args.device)
    for kind in ("short", "medium"):
        bs = raw["float32"][kind]["best_batch"]
        sample = texts[kind][:256]
        st.encode(sample[:bs], batch_size=bs)
        t = time.perf_counter()
        st.encode(sample, batch_size=bs)
        st_model_texts[kind] = len(sample) / (time.perf_counter() - t)
    del st
    del fp32
    bf16 = EmbeddingModel(WorkerConfig(device=args.device, dtype="bfloat16"))
    raw["bfloat16"] = {
        kind: raw_throughput(bf16, texts[kind], sizes[kind], args.raw_seconds)
        for kind in ("short", "medium")
    }
    raw["bfloat16_canary_cosine"] = bf16.canary_cosine
    del bf16
    results["raw"] = raw
    results["raw_batch1_forward_ms"] = batch1_ms
    results["sentence_transformers_texts_per_s"] = st_model_texts

    scenarios = (("32x1", 32, 1), ("8x32", 8, 32))
    print("worker under load ...", flush=True)
    worker_res: dict[str, Any] = {}
    with start_worker("--device", args.device, "--dtype", args.dtype, timeout=120) as worker:
        results["worker_single_client_p50_ms"] = single_client_p50_ms(
            worker.url, "/embed", "inputs", texts["short"][0], 3.0
        )
        for kind in ("short", "medium"):
            for name, clients, per in scenarios:
                r = run_load(
                    worker.url, "/embed", "inputs", texts[kind], clients, per, args.seconds, {}
                )
                r["ratio_to_raw"] = r["texts_per_s"] / raw["float32"][kind]["texts_per_s"]
                r["ratio_to_sentence_transformers"] = r["texts_per_s"] / st_model_texts[kind]
                worker_res[f"{kind}/{name}"] = r
                print(
                    f"  {kind:6} {name:5} {r['texts_per_s']:8.1f} texts/s"
                    f"  ratio {r['ratio_to_raw']:.2f}",
                    flush=True,
                )
    results["worker"] = worker_res
    results["latency_overhead_ms"] = results["worker_single_client_p50_ms"] - batch1_ms
    print("flood ...", flush=True)
    results["flood"] = flood(args.flood_seconds)
    fl = results["flood"]
    results["goals"] = {
        "short 32x1 >= 0.9x raw": worker_res["short/32x1"]["ratio_to_raw"] >= 0.9,
        "medium 32x1 >= 0.9x raw": worker_res["medium/32x1"]["ratio_to_raw"] >= 0.9,
        "single-client overhead <= 3 ms": results["latency_overhead_ms"] <= 3.0,
        "flood peak RSS <= 1.5 GiB": fl["peak_rss_gib"] <= 1.5,
        "flood: every valid request 200 within 1 s": fl["probes_ok"] == fl["probes"]
        and fl["probe_max_ms"] <= 1000,
    }

    peer: dict[str, Any] = {"name": "infinity-emb"}
    if Path(args.peer_python).exists():
        print("peer (infinity-emb) ...", flush=True)
        proc, url, note = start_peer(args.peer_python, 120)
        peer["command"] = note
        if proc is not None:
            try:
                extra = {"model": str(default_model_path())}
                peer["single_client_p50_ms"] = single_client_p50_ms(
                    url, "/embeddings", "input", texts["short"][0], 3.0
                )
                for kind in ("short", "medium"):
                    for name, clients, per in scenarios:
                        r = run_load(
                            url,
                            "/embeddings",
                            "input",
                            texts[kind],
                            clients,
                            per,
                            args.seconds,
                            extra,
                        )
                        r["ratio_to_raw"] = r["texts_per_s"] / raw["float32"][kind]["texts_per_s"]
                        peer[f"{kind}/{name}"] = r
                        print(
                            f"  {kind:6} {name:5} {r['texts_per_s']:8.1f} texts/s (peer)",
                            flush=True,
                        )
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        else:
            peer["error"] = note
    else:
        peer["error"] = f"no peer interpreter at {args.peer_python}"
    results["peer"] = peer

    md = render(results)
    print(md)
    (out_dir / "worker.json").write_text(json.dumps(results, indent=2, default=str))
    (out_dir / "worker.md").write_text(md)
    return 0


def render(r: dict[str, Any]) -> str:
    raw = r["raw"]
    lines = [
        "## Raw model forward (texts/s at the best batch size)",
        "",
        "| texts | tokens/text | float32 | best batch | bfloat16 | best batch | bf16 speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in ("short", "medium"):
        f, b = raw["float32"][kind], raw["bfloat16"][kind]
        lines.append(
            f"| {kind} | {r['tokens_per_text'][kind]:.0f} | {f['texts_per_s']:.0f} "
            f"| {f['best_batch']} | {b['texts_per_s']:.0f} | {b['best_batch']} "
            f"| {b['texts_per_s'] / f['texts_per_s']:.2f}x |"
        )
    lines += [
        "",
        f"bfloat16 canary cosine to float32: {raw['bfloat16_canary_cosine']:.6f}",
        "",
        "## Worker under load (float32, default settings)",
        "",
        "| texts | clients x texts/request | worker texts/s | ratio to raw "
        "| ratio to sentence-transformers | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, w in r["worker"].items():
        kind, scen = key.split("/")
        lines.append(
            f"| {kind} | {scen} | {w['texts_per_s']:.0f} | {w['ratio_to_raw']:.2f} | "
            f"{w['ratio_to_sentence_transformers']:.2f} | {w['p50_ms']:.1f} "
            f"| {w['p99_ms']:.1f} | {w['errors']} |"
        )
    st = r["sentence_transformers_texts_per_s"]
    lines += [
        "",
        "sentence-transformers `encode` (same texts, best batch): "
        f"short {st['short']:.0f} texts/s, "
        f"medium {st['medium']:.0f} texts/s.",
        "",
        "## Single-client latency (one short text)",
        "",
        f"worker p50 {r['worker_single_client_p50_ms']:.2f} ms, raw batch-1 forward "
        f"{r['raw_batch1_forward_ms']:.2f} ms, overhead {r['latency_overhead_ms']:.2f} ms.",
        "",
        "## Flood (64 clients, maximum-size bodies of over-long texts)",
        "",
        f"flood requests answered {r['flood']['flood_requests']} "
        f"(accepted: {r['flood']['flood_accepted']}); valid probes {r['flood']['probes_ok']}"
        f"/{r['flood']['probes']} answered 200, p50 {r['flood']['probe_p50_ms']:.0f} ms, "
        f"max {r['flood']['probe_max_ms']:.0f} ms; peak RSS {r['flood']['peak_rss_gib']:.2f} GiB "
        f"(after start-up {r['flood']['rss_before_gib']:.2f} GiB).",
        "",
        "## Goals",
        "",
        *(f"- {name}: {'met' if ok else 'MISSED'}" for name, ok in r["goals"].items()),
        "",
        "## Peer server: infinity-emb",
        "",
    ]
    peer = r["peer"]
    if "error" in peer:
        lines.append(f"not measured: {peer['error']}")
    else:
        lines += [
            f"single-client p50 {peer['single_client_p50_ms']:.2f} ms",
            "",
            "| texts | clients x texts/request | peer texts/s | ratio to raw | p50 ms | errors |",
            "|---|---|---|---|---|---|",
        ]
        for key, w in peer.items():
            if "/" not in key or not isinstance(w, dict):
                continue
            kind, scen = key.split("/")
            lines.append(
                f"| {kind} | {scen} | {w['texts_per_s']:.0f} | {w['ratio_to_raw']:.2f} "
                f"| {w['p50_ms']:.1f} | {w['errors']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

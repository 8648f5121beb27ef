"""``embedbalance bench`` against two real workers, one slowed with ``--delay-ms``:
ranks them right, and its suggested weights follow an independent capacity measurement."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.helpers.worker_proc import WorkerProcess

from embedbalance.cli import main

BATCH = 2
CONCURRENCY = 4
#: One-word texts: a forward pass over two of them is small next to the workers' delays.
SHORT = [f"word{i}" for i in range(64)]


def _capacity(url: str, seconds: float = 2.5) -> float:
    """Texts/s of ``url`` alone at a fixed concurrency: the independent measurement."""
    batches = [SHORT[i : i + BATCH] for i in range(0, len(SHORT), BATCH)]
    done = [0] * CONCURRENCY
    with httpx.Client(timeout=30) as http:
        http.post(url + "/embed", json={"inputs": batches[0]}).raise_for_status()
        deadline = time.monotonic() + seconds

        def loop(k: int) -> None:
            n = 0
            while time.monotonic() < deadline and n < 500:
                http.post(
                    url + "/embed",
                    json={"inputs": batches[(k + n) % len(batches)], "truncate": True},
                ).raise_for_status()
                done[k] += BATCH
                n += 1

        started = time.monotonic()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(loop, range(CONCURRENCY)))
        return sum(done) / (time.monotonic() - started)


def _bench_report(
    fast: str, slow: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> dict[str, Any]:
    """Run ``bench --json`` over both replicas with a plot; return the parsed report."""
    plot = tmp_path / "bench.png"
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(SHORT))
    status = main(
        [
            "bench", fast, slow, "--json", "--batch-size", str(BATCH), "--texts", str(texts),
            "--concurrency", "1,2,4", "--level-seconds", "2.5", "--plot", str(plot),
        ]
    )  # fmt: skip
    assert status == 0
    assert plot.stat().st_size > 10_000
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


@pytest.mark.slow  # ~30 s; the table test below keeps the ranking in the default run
def test_bench_ranks_replicas_and_reports_every_level(
    cli_workers: dict[str, WorkerProcess], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """If this fails, bench ranks a slowed replica above a fast one, drops a level of its
    ramp, counts errors where there were none, or drops its plot."""
    fast, slow = cli_workers["fast"].url, cli_workers["slow"].url
    report = _bench_report(fast, slow, capsys, tmp_path)
    capacity = {r["url"]: r["capacity"] for r in report["replicas"]}
    assert capacity[fast] > capacity[slow] > 0
    weights = report["suggested"]["weights"]
    assert weights[slow] == 1.0
    assert weights[fast] > 1.0
    assert report["suggested"]["hpa_queue_depth"] >= 1
    for r in report["replicas"]:
        assert [lv["concurrency"] for lv in r["levels"]] == [1, 2, 4]
        assert all(lv["errors"] == 0 for lv in r["levels"])


@pytest.mark.slow
def test_bench_weights_follow_an_independent_capacity_measurement(
    cli_workers: dict[str, WorkerProcess], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """If this fails, bench suggests weights more than 25% off the replicas' capacity
    ratio as measured independently right after it.

    In the slow suite: both numbers are measurements, and on a busy two-core machine the
    forward pass (not the workers' fixed delays) sets the capacity ratio, which then
    drifts between the two measurements."""
    fast, slow = cli_workers["fast"].url, cli_workers["slow"].url
    weights = _bench_report(fast, slow, capsys, tmp_path)["suggested"]["weights"]
    measured = _capacity(fast) / _capacity(slow)
    assert measured > 1.2, "the delay did not slow the worker enough to tell them apart"
    assert abs(weights[fast] / measured - 1) <= 0.25, (weights, measured)


def test_bench_table_lists_the_fast_replica_first(
    cli_workers: dict[str, WorkerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    """If this fails, the human-readable table stops ranking by capacity or stops
    printing the suggestions users copy into their code and manifests."""
    fast, slow = cli_workers["fast"].url, cli_workers["slow"].url
    assert (
        main(
            ["bench", slow, fast, "--concurrency", "2", "--level-seconds", "1", "--batch-size", "8"]
        )
        == 0
    )
    out = capsys.readouterr().out
    table = out.splitlines()
    assert table[1].startswith(fast)
    assert table[2].startswith(slow)
    assert "suggested backends: [Backend(" in out
    assert "suggested HPA target: embedbalance_worker_queue_depth" in out


def test_bench_bad_ramp_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """If this fails, a malformed --concurrency runs something anyway instead of saying so."""
    assert main(["bench", "http://127.0.0.1:9", "--concurrency", "1,x"]) == 2
    assert "--concurrency" in capsys.readouterr().err

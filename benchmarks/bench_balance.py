"""embedbalance against HAProxy and nginx, side by side, in one run.

What it answers: a user can put a proxy in front of the embedding workers instead of
balancing inside the app. Which does better — in median, mean, tail and throughput,
not the tail alone — when replicas differ in speed, under open-loop arrivals near
saturation, with closed loops below and above the servers' slots, when one replica
straggles, hangs, dies, or is slow for a moment and recovers, and when several client
processes balance independently? Every configuration gets the same backends (fresh
processes each time, so no queue leaks from one run into the next), the same load and
the same measurement window.

Scenarios (``--scenarios``; heterogeneous backends: three fast with 8 slots, one 6x
slower with 2 slots; "equal": four fast ones with 4 slots each):

- ``open50``, ``open70``, ``open85``, ``open95``: heterogeneous, open-loop Poisson
  arrivals at that share of capacity;
- ``below``: heterogeneous, closed loop of 20 users (below the 26 slots);
- ``above``: heterogeneous, closed loop of 64 users (above them);
- ``kill``: as ``above``, a fast backend SIGKILLed at 30% of the window, restarted at 60%;
- ``clients8``: as ``above``, the users split over eight client processes (each its own
  balancer; the proxies see them as clients of one proxy);
- ``stragglers``: heterogeneous, open loop at 0.85, one fast backend adds 3 s to 2% of
  its requests;
- ``equal50``: equal backends, open loop at 0.5, nothing happens (the hang's baseline);
- ``hang``: as ``equal50``, one backend hangs (accepts, does not answer) from 30% to 60%
  of the window (2.4 s), longer than the caller's timeout (2 s); the requests caught in
  the hang are answered when it ends;
- ``degrade50``, ``degrade70``, ``degrade85``: equal backends, open loop, one of them 8x
  slower for 5 s and then back; shares and p50 reported per phase.

Service times are scaled up (fast mean 150 ms by default, where a small GPU model
answers in tens of ms) so that the load generator stays well under half a core on a
2-core machine: queueing behaviour scales with the service time, CPU cost per request
does not. Results: tables on stdout, ``bench-results/balance.json`` and ``.md``.

Run: ``python benchmarks/bench_balance.py`` (about 15 minutes), ``--quick`` (short
windows), ``--scenarios open85,degrade70``, ``--configs "HAProxy leastconn,PeakEwma"``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _proxies import (  # noqa: E402
    Managed,
    ProxySpec,
    ensure_installed,
    free_port,
    free_ports,
    start_proxy,
    wait_http,
)

ROOT = HERE.parent
RESULTS = ROOT / "bench-results"

PROXY_CONFIGS = {
    "HAProxy leastconn": ("haproxy", "leastconn"),
    "HAProxy roundrobin": ("haproxy", "roundrobin"),
    "nginx least_conn": ("nginx", "least_conn"),
}
BALANCERS = (
    "RoundRobin",
    "LeastConnections",
    "PowerOfTwoChoices",
    "PeakEwma",
    "ShortestExpectedDelay",
    "LeastOutstandingTokens",
    "GpuPriority",
)
#: The default balancer with its per-attempt policies set by hand (the plain names
#: keep the transport's defaults): what each policy is worth on its own.
VARIANTS: dict[str, dict[str, Any]] = {
    "ShortestExpectedDelay (no hedge)": {"hedge": None},
    "ShortestExpectedDelay (pool-wide hedge)": {
        "hedge": {
            "percentile": 95,
            "multiple": 1.0,
            "per_backend": False,
            "min_samples": 50,
            "budget_ratio": 0.1,
        }
    },
    "ShortestExpectedDelay (+ auto deadline)": {"attempt_timeout": "auto"},
    "ShortestExpectedDelay (hedge 1.5x p90)": {"hedge": {"multiple": 1.5}},
    "ShortestExpectedDelay (hedge 1x p99)": {"hedge": {"percentile": 99, "multiple": 1.0}},
    "ShortestExpectedDelay (retest 0.1 s)": {"balancer_params": {"retest": 0.1}},
}
ALL_CONFIGS = (*PROXY_CONFIGS, *BALANCERS, *VARIANTS)
#: The library's default balancer: the one the goals are about.
DEFAULT = "ShortestExpectedDelay"
#: The configurations of every scenario: the issue's comparison set.
#: (The default without hedging too: what the hedge, on by default, is worth.)
NO_HEDGE = "ShortestExpectedDelay (no hedge)"
MAIN_CONFIGS = (
    "HAProxy leastconn",
    "nginx least_conn",
    "LeastConnections",
    "PeakEwma",
    DEFAULT,
    NO_HEDGE,
)
#: Degrade-and-recover is compared with the proxy and the plain least-connections.
DEGRADE_CONFIGS = ("HAProxy leastconn", "LeastConnections", "PeakEwma", DEFAULT, NO_HEDGE)
PERCENTILES = (50, 90, 99, 99.9)


@attrs.frozen
class Scenario:
    """One load situation: which backends, which load, which events."""

    title: str
    backends: str = "hetero"  # or "equal"
    rho: float | None = None  # open loop at this share of capacity; None: closed loop
    users: int = 64
    processes: int = 1
    kill: bool = False
    stragglers: bool = False
    hang: bool = False
    degrade: bool = False
    request_timeout: float = 60.0


SCENARIOS: dict[str, Scenario] = {
    "open50": Scenario("heterogeneous, open loop at 0.5 of capacity", rho=0.5),
    "open70": Scenario("heterogeneous, open loop at 0.7 of capacity", rho=0.7),
    "open85": Scenario("heterogeneous, open loop at 0.85 of capacity", rho=0.85),
    "open95": Scenario("heterogeneous, open loop at 0.95 of capacity", rho=0.95),
    "below": Scenario("heterogeneous, closed loop of 20 users (26 slots)", users=20),
    "above": Scenario("heterogeneous, closed loop of 64 users (26 slots)", users=64),
    "kill": Scenario("(above) + a fast backend SIGKILLed at 30%, restarted at 60%", kill=True),
    "clients8": Scenario(
        "(above) split over 8 client processes, each its own balancer", processes=8
    ),
    "stragglers": Scenario(
        "heterogeneous, open loop at 0.85, one fast backend adds 3 s to 2% of requests",
        rho=0.85,
        stragglers=True,
    ),
    # The hang runs on equal replicas at a load the other three can carry: in the
    # heterogeneous pool the 900 ms replica's own answers set the p99.9 at several
    # times the p99 with no hang at all, and at 0.7 of its capacity losing a fast
    # replica leaves more work than the rest can serve, so the tail there measured
    # the slow replica and the overload, not how fast a stuck request is rescued.
    "equal50": Scenario("4 equal backends, open loop at 0.5 (the hang's baseline)", "equal", 0.5),
    "hang": Scenario(
        "4 equal backends, open loop at 0.5, one hangs from 30% to 60% (2.4 s; caller timeout 2 s)",
        "equal",
        0.5,
        hang=True,
        request_timeout=2.0,
    ),
    "degrade50": Scenario(
        "4 equal backends, open loop at 0.5, one 8x slower for 5 s", "equal", 0.5, degrade=True
    ),
    "degrade70": Scenario(
        "4 equal backends, open loop at 0.7, one 8x slower for 5 s", "equal", 0.7, degrade=True
    ),
    "degrade85": Scenario(
        "4 equal backends, open loop at 0.85, one 8x slower for 5 s", "equal", 0.85, degrade=True
    ),
}
OPEN = ("open50", "open70", "open85", "open95")
#: Degrade phases, seconds into the window: before, during, 0-2 s and 2-5 s after.
#: Six seconds before: identical backends' shares are judged within ±20%, and over 3 s
#: at 0.5 load (about 40 requests each) the dice alone spread them 1.05-1.27x apart
#: under `LeastConnections`.
DEGRADE_AT, DEGRADE_FOR = 6.0, 5.0
DEGRADE_WINDOW = 17.0


@attrs.frozen
class BackendSpec:
    """One emulated replica: ``slots`` concurrent requests, lognormal service times."""

    slots: int
    mean: float
    cv: float = 0.3
    straggle_p: float = 0.0
    straggle_s: float = 0.0

    @property
    def capacity(self) -> float:
        """Requests per second it completes when saturated."""
        return self.slots / self.mean


@attrs.frozen
class Settings:
    fast_mean: float = 0.15
    slow_factor: float = 6.0
    cv: float = 0.3
    warmup: float = 2.0
    window: float = 8.0
    drain: float = 3.0
    ramp: float | None = None  # None: half the warm-up
    health_interval: float = 0.5

    def backends(self, scenario: Scenario) -> list[BackendSpec]:
        fast = BackendSpec(8, self.fast_mean, self.cv)
        if scenario.backends == "equal":
            # 4 slots each (107 req/s in all): at 8 the proxies' own request rate, not
            # the backends, would be measured on a 2-core machine.
            return [attrs.evolve(fast, slots=4)] * 4
        slow = BackendSpec(2, self.fast_mean * self.slow_factor, self.cv)
        first = attrs.evolve(fast, straggle_p=0.02, straggle_s=3.0) if scenario.stragglers else fast
        return [first, fast, fast, slow]

    def window_for(self, scenario: Scenario) -> float:
        return max(self.window, DEGRADE_WINDOW) if scenario.degrade else self.window


def ideal_throughput(scenario: Scenario, specs: Sequence[BackendSpec]) -> float:
    """What the servers can complete per second over the window, given the scenario's
    events (for an open loop: the arrival rate, when below that)."""
    full = sum(b.capacity for b in specs)
    if scenario.kill:  # specs[0] gone from 30% to 60% of the window
        full -= specs[0].capacity * 0.3
    if scenario.hang:
        full -= specs[0].capacity * 0.3
    if scenario.rho is not None:
        return min(full, scenario.rho * sum(b.capacity for b in specs))
    return full


# -- processes ---------------------------------------------------------------------


class Backends:
    """The emulated replicas of one run, each its own process on its own port."""

    def __init__(self, specs: Sequence[BackendSpec], seed: int) -> None:
        self.specs = list(specs)
        self.ports = free_ports(len(specs))
        self.seed = seed
        self.procs: list[Managed | None] = [None] * len(specs)

    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def start_one(self, i: int, wait: bool = True) -> None:
        spec = self.specs[i]
        cmd = [
            sys.executable,
            str(HERE / "latency_server.py"),
            "--port",
            str(self.ports[i]),
            "--slots",
            str(spec.slots),
            "--mean",
            str(spec.mean),
            "--cv",
            str(spec.cv),
            "--seed",
            str(self.seed * 100 + i),
            "--straggle-p",
            str(spec.straggle_p),
            "--straggle-s",
            str(spec.straggle_s),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.procs[i] = Managed(f"backend {i}", proc)
        if wait:
            wait_http(f"{self.urls()[i]}/health", proc=self.procs[i])

    def start(self) -> None:
        for i in range(len(self.specs)):
            self.start_one(i, wait=False)
        for i, url in enumerate(self.urls()):
            wait_http(f"{url}/health", proc=self.procs[i])

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None:
            proc.kill()

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None:
                proc.stop(grace=2.0)


def _target(config: str, backends: Backends, settings: Settings) -> tuple[dict[str, Any], Any]:
    """The load generator's target for ``config``, plus a proxy to start (or None)."""
    addrs = tuple(u.removeprefix("http://") for u in backends.urls())
    if config in PROXY_CONFIGS:
        kind, algorithm = PROXY_CONFIGS[config]
        spec = ProxySpec(
            kind, algorithm, free_port(), addrs, check_interval=settings.health_interval
        )
        return {"kind": "url", "url": f"http://127.0.0.1:{spec.port}"}, spec
    best = max(b.capacity for b in backends.specs)
    balancer = config.partition(" ")[0]
    entries = []
    for url, b in zip(backends.urls(), backends.specs, strict=True):
        entry: dict[str, Any] = {"url": url}
        if balancer == "GpuPriority":  # tiers from capacity: the big boxes first
            entry["tier"] = 0 if b.capacity >= best / 2 else 1
        entries.append(entry)
    target = {
        "kind": "embedbalance",
        "balancer": balancer,
        "backends": entries,
        "health_interval": settings.health_interval,
        "attempts": 3,
        **VARIANTS.get(config, {}),
    }
    return target, None


def _spawn_load(spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(HERE / "_load.py"), json.dumps(spec)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _collect(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {err.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def _concat(parts: Sequence[dict[str, Any]], key: str, dtype: Any = float) -> np.ndarray:
    return np.concatenate([np.asarray(p[key], dtype) for p in parts])


def summarise(
    parts: Sequence[dict[str, Any]], window_start: float, window: float
) -> dict[str, Any]:
    """Throughput = successes completed inside the window ÷ window; latency percentiles
    and mean over successes completed inside it; errors over the whole run."""
    ends = _concat(parts, "ends")
    lats = _concat(parts, "latencies")
    oks = _concat(parts, "ok", bool)
    inside = (ends >= window_start) & (ends < window_start + window)
    good = lats[inside & oks]
    pct = np.percentile(good, PERCENTILES) if good.size else [float("nan")] * len(PERCENTILES)
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
    cpu = sum(p["cpu_s"] for p in parts)
    wall = max(p["wall_s"] for p in parts)
    return {
        "throughput": float(good.size / window),
        "completed_in_window": int(inside.sum()),
        "p50": float(pct[0]),
        "mean": float(good.mean()) if good.size else float("nan"),
        "p90": float(pct[1]),
        "p99": float(pct[2]),
        "p999": float(pct[3]),
        "failed": int((~oks).sum()) + errors.get("shed", 0),
        "errors": errors,
        "unfinished": int(sum(p["unfinished"] for p in parts)),
        "hedges": int(sum(p.get("hedges", 0) for p in parts)),
        "retries": int(sum(p.get("retries", 0) for p in parts)),
        "requests": int(oks.size),
        "loadgen_cpu": float(cpu / wall) if wall > 0 else float("nan"),
        "processes": len(parts),
    }


def phases(
    parts: Sequence[dict[str, Any]],
    window_start: float,
    ports: Sequence[int],
    arrivals: Sequence[Sequence[float]] = (),
) -> dict[str, dict[str, Any]]:
    """Degrade-and-recover, by when requests *started*: each backend's share of the
    requests (by who answered) and the p50, before, during, 0-2 s and 2-5 s after the
    slow spell; with ``arrivals`` (each backend's, from ``/admin/arrivals``), also each
    backend's share of the copies that *arrived* in the phase — where the balancer
    placed work, hedges included, which the answering backend alone hides."""
    starts = _concat(parts, "starts") - window_start
    lats = _concat(parts, "latencies")
    oks = _concat(parts, "ok", bool)
    served = _concat(parts, "served_by", int)
    end = DEGRADE_AT + DEGRADE_FOR
    spans = {
        "before": (0.0, DEGRADE_AT),
        "during": (DEGRADE_AT, end),
        "after 0-2 s": (end, end + 2.0),
        "after 2-5 s": (end + 2.0, end + 5.0),
    }
    out = {}
    for name, (a, b) in spans.items():
        sel = (starts >= a) & (starts < b) & oks
        n = int(sel.sum())
        shares = [float((served[sel] == port).sum() / n) if n else float("nan") for port in ports]
        placed = [sum(1 for t in ts if a <= t - window_start < b) for ts in arrivals]
        total = sum(placed)
        out[name] = {
            "shares": shares,
            "placed": [p / total if total else float("nan") for p in placed],
            "p50": float(np.percentile(lats[sel], 50)) if n else float("nan"),
            "requests": n,
        }
    return out


#: Regain: the degraded backend's share over a sliding window of this many seconds, and
#: the fraction of its fair share that counts as regained.
REGAIN_WINDOW, REGAIN_FRACTION = 1.0, 0.8


def regain_time(
    parts: Sequence[dict[str, Any]],
    window_start: float,
    port: int,
    fair: float,
    step: float = 0.05,
    horizon: float = 5.0,
) -> float:
    """Seconds from the end of the slow spell until the degraded backend's share of the
    requests started in the next ``REGAIN_WINDOW`` seconds first reaches
    ``REGAIN_FRACTION`` of ``fair`` (nan if not within ``horizon``).

    Why beside the 0-2 s share: that share averages the wait for the first sign of the
    recovery with the service after it, so it cannot tell a backend shunned for the
    whole 2 s from one back at full share after 0.6 s. This is the "how long is it
    shunned" figure; the 0-2 s share stays the "capacity lost meanwhile" one."""
    starts = _concat(parts, "starts") - window_start
    oks = _concat(parts, "ok", bool)
    served = _concat(parts, "served_by", int)
    end = DEGRADE_AT + DEGRADE_FOR
    for t in np.arange(0.0, horizon, step):
        sel = (starts >= end + t) & (starts < end + t + REGAIN_WINDOW) & oks
        n = int(sel.sum())
        if n and (served[sel] == port).sum() / n >= REGAIN_FRACTION * fair:
            return float(t)
    return float("nan")


def timeline(
    parts: Sequence[dict[str, Any]], t0: float, horizon: float, step: float = 0.5
) -> dict[str, list[float]]:
    """Successes and failures per second in ``step``-second bins from ``t0``."""
    edges = np.arange(0.0, horizon + step, step)
    ends = np.concatenate([np.asarray(p["ends"], float) for p in parts]) - t0
    oks = np.concatenate([np.asarray(p["ok"], bool) for p in parts])
    ok_hist, _ = np.histogram(ends[oks], edges)
    bad_hist, _ = np.histogram(ends[~oks], edges)
    return {
        "t": edges[:-1].tolist(),
        "ok_per_s": (ok_hist / step).tolist(),
        "failed_per_s": (bad_hist / step).tolist(),
    }


def run_one(name: str, config: str, settings: Settings, seed: int) -> dict[str, Any]:
    """Fresh backends (and proxy), one load run with the scenario's events, a summary."""
    scenario = SCENARIOS[name]
    specs = settings.backends(scenario)
    window = settings.window_for(scenario)
    backends = Backends(specs, seed)
    proxy: Managed | None = None
    timers: list[threading.Timer] = []
    loaders: list[subprocess.Popen[bytes]] = []
    try:
        backends.start()
        target, proxy_spec = _target(config, backends, settings)
        if proxy_spec is not None:
            proxy = start_proxy(proxy_spec)
        processes = scenario.processes
        start_at = time.monotonic() + 1.0 + 0.3 * processes  # let every process import
        window_start = start_at + settings.warmup
        drain = settings.drain
        if scenario.hang:
            drain = max(drain, scenario.request_timeout + 1.0)
        spec: dict[str, Any] = {
            "target": target,
            "users": max(1, scenario.users // processes),
            "warmup": settings.warmup,
            "window": window,
            "start_at": start_at,
            "drain_timeout": drain,
            "request_timeout": scenario.request_timeout,
            "ramp": settings.warmup / 2 if settings.ramp is None else settings.ramp,
        }
        if scenario.rho is not None:
            spec["rate"] = scenario.rho * sum(b.capacity for b in specs)
        loaders = [_spawn_load(dict(spec, seed=seed * 1000 + k)) for k in range(processes)]
        url0 = backends.urls()[0]

        def admin(path: str) -> Callable[[], None]:
            def call() -> None:
                httpx.post(f"{url0}{path}", timeout=5).raise_for_status()

            return call

        events: list[tuple[float, Callable[[], None]]] = []
        if scenario.kill:
            events = [
                (0.3 * window, lambda: backends.kill(0)),
                (0.6 * window, lambda: backends.start_one(0, wait=False)),
            ]
        elif scenario.hang:
            events = [
                (0.3 * window, admin("/admin/hang?on=1")),
                (0.6 * window, admin("/admin/hang?on=0")),
            ]
        elif scenario.degrade:
            events = [
                (DEGRADE_AT, admin("/admin/slowdown?factor=8")),
                (DEGRADE_AT + DEGRADE_FOR, admin("/admin/slowdown?factor=1")),
            ]
        for at, action in events:
            delay = window_start + at - time.monotonic()
            timer = threading.Timer(max(0.0, delay), action)
            timer.start()
            timers.append(timer)
        budget = start_at - time.monotonic() + settings.warmup + window
        parts = [_collect(p, timeout=budget + drain + 30) for p in loaders]
        for timer in timers:
            timer.join()
        row = summarise(parts, window_start, window)
        if scenario.degrade:
            arrivals = [
                httpx.get(f"{url}/admin/arrivals", timeout=10).json() for url in backends.urls()
            ]
            row["phases"] = phases(parts, window_start, backends.ports, arrivals)
            row["regain_s"] = regain_time(
                parts, window_start, backends.ports[0], 1.0 / len(backends.ports)
            )
        row["timeline"] = timeline(parts, window_start, window)
        return row
    finally:
        for timer in timers:
            timer.cancel()
        for p in loaders:
            if p.poll() is None:
                p.kill()
                p.wait()
        if proxy is not None:
            proxy.stop()
        backends.stop()


# -- reporting ---------------------------------------------------------------------


def _fmt_s(x: float) -> str:
    if x != x:  # NaN
        return "—"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def _hedges(row: dict[str, Any]) -> str:
    """Hedge copies sent, as a share of the requests (— through a proxy)."""
    if not row.get("hedges"):
        return "0" if "hedges" in row else "—"
    return f"{row['hedges']} ({100 * row['hedges'] / max(row.get('requests', 1), 1):.1f}%)"


def table(name: str, rows: dict[str, dict[str, Any]], ideal: float) -> str:
    """One scenario as a Markdown table (and its phases, for degrade-and-recover)."""
    head = (
        f"### {name}: {SCENARIOS[name].title}\n\n"
        f"Ideal in-window throughput: {ideal:.1f} req/s.\n\n"
        "| configuration | req/s | % ideal | p50 | mean | p99 | p99.9 | errors "
        "| hedges | loadgen CPU |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for config, r in rows.items():
        lines.append(
            f"| {config} | {r['throughput']:.1f} | {100 * r['throughput'] / ideal:.0f}% "
            f"| {_fmt_s(r['p50'])} | {_fmt_s(r['mean'])} | {_fmt_s(r['p99'])} "
            f"| {_fmt_s(r['p999'])} | {r['failed']} | {_hedges(r)} "
            f"| {100 * r['loadgen_cpu']:.0f}% |"
        )
    out = head + "\n".join(lines) + "\n"
    if any("phases" in r for r in rows.values()):
        out += (
            "\nPer phase (by start time): the degraded backend's share of the answers (the "
            "other three's range) / p50 / its share of the copies that arrived (hedges "
            "included); regained: seconds after the spell until its share of the next "
            f"{REGAIN_WINDOW:g} s first reaches {REGAIN_FRACTION:g}x fair.\n\n"
            "| configuration | before | during | after 0-2 s "
            "| after 2-5 s | regained |\n|---|---|---|---|---|---:|\n"
        )
        for config, r in rows.items():
            cells = []
            for phase in r["phases"].values():
                sh = phase["shares"]
                placed = phase.get("placed") or [float("nan")]
                cells.append(
                    f"{100 * sh[0]:.1f}% ({100 * min(sh[1:]):.0f}-{100 * max(sh[1:]):.0f}%) "
                    f"/ {_fmt_s(phase['p50'])} / {100 * placed[0]:.1f}%"
                )
            cells.append(f"{r.get('regain_s', float('nan')):.2f} s")
            out += f"| {config} | " + " | ".join(cells) + " |\n"
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def goals(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The issues' goals, as ratios in this run; each line says met or MISSED."""
    out: list[str] = []

    def check(label: str, value: float, limit: float, above: bool = False) -> None:
        ok = value >= limit if above else value <= limit
        sign = ">=" if above else "<="
        out.append(f"{label}: {value:.2f} (goal {sign} {limit:g}): {'met' if ok else 'MISSED'}")

    def no_errors(label: str, row: dict[str, Any]) -> None:
        out.append(
            f"{label}: errors {row['failed']} (goal 0): "
            + ("met" if row["failed"] == 0 else "MISSED")
        )

    for name, rows in results.items():
        scenario = SCENARIOS[name]
        ours = rows.get(DEFAULT)
        lc = rows.get("LeastConnections")
        hap = rows.get("HAProxy leastconn")
        if ours is None:
            continue
        if lc is not None:
            t = _ratio(ours["throughput"], lc["throughput"])
            check(f"{name} throughput vs LeastConnections", t, 0.99, above=True)
            check(f"{name} p99 vs LeastConnections", _ratio(ours["p99"], lc["p99"]), 1.0)
            if scenario.rho is not None and not scenario.degrade:
                check(f"{name} p50 vs LeastConnections", _ratio(ours["p50"], lc["p50"]), 1.05)
                check(f"{name} mean vs LeastConnections", _ratio(ours["mean"], lc["mean"]), 1.05)
        if hap is not None:
            if name == "kill":
                t = _ratio(ours["throughput"], hap["throughput"])
                check("kill throughput vs HAProxy leastconn", t, 0.97, above=True)
            if name in (*OPEN, "below", "above", "stragglers"):
                check(f"{name} p99 vs HAProxy leastconn", _ratio(ours["p99"], hap["p99"]), 0.3)
            if name == "clients8":
                check("clients8 p99 vs one shared HAProxy", _ratio(ours["p99"], hap["p99"]), 1.0)
        if name == "hang":
            no_errors("hang", ours)
            base = results.get("equal50", {}).get(DEFAULT)
            if base is not None:
                r = _ratio(ours["p999"], base["p99"])
                check("hang p99.9 vs the default's equal50 p99 (no hang)", r, 2.0)
        if scenario.degrade:
            ph = ours["phases"]
            check(
                f"{name} share 0-2 s after recovery / fair",
                ph["after 0-2 s"]["shares"][0] / 0.25,
                0.8,
                above=True,
            )
            check(
                f"{name} seconds until the recovered backend is back to "
                f"{REGAIN_FRACTION:g}x fair ({REGAIN_WINDOW:g}-s window)",
                ours.get("regain_s", float("nan")),
                2.0,
            )
            check(
                f"{name} share 2-5 s after recovery / fair",
                ph["after 2-5 s"]["shares"][0] / 0.25,
                0.8,
                above=True,
            )
            before = ph["before"]["shares"]
            check(
                f"{name} before: max/min share of identical backends",
                _ratio(max(before), min(before)),
                1.2,
            )
            if lc is not None:
                # The same figure for a balancer without estimates: the window's own
                # sampling noise (a few hundred requests), for reading the one above.
                theirs = lc["phases"]["before"]["shares"]
                out[-1] += f" (LeastConnections: {_ratio(max(theirs), min(theirs)):.2f})"
            if lc is not None:
                p50_lc = lc["phases"]["after 2-5 s"]["p50"]
                check(
                    f"{name} after-phase p50 vs LeastConnections",
                    _ratio(ph["after 2-5 s"]["p50"], p50_lc),
                    1.1,
                )
            if hap is not None:
                check(
                    f"{name} whole-run p99 vs HAProxy leastconn",
                    _ratio(ours["p99"], hap["p99"]),
                    0.5,
                )
            no_errors(name, ours)
    return out


def _versions(binaries: dict[str, str | None]) -> dict[str, str]:
    out = {"python": platform.python_version(), "httpx": httpx.__version__}
    for name, path in binaries.items():
        if path is None:
            out[name] = "missing"
            continue
        flag = "-v"
        done = subprocess.run([path, flag], capture_output=True, check=False)
        text = (done.stdout or done.stderr).decode().strip().splitlines()
        out[name] = text[0] if text else "?"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--configs", default=None, help="comma-separated configuration names")
    parser.add_argument("--window", type=float, default=None, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=None)
    parser.add_argument("--fast-ms", type=float, default=150.0, help="fast mean service time")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    settings = Settings(fast_mean=args.fast_ms / 1000.0)
    if args.quick:
        settings = attrs.evolve(settings, warmup=1.5, window=4.0, drain=2.0)
    settings = attrs.evolve(
        settings, window=args.window or settings.window, warmup=args.warmup or settings.warmup
    )
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")
    chosen = [c.strip() for c in args.configs.split(",")] if args.configs else None
    for c in chosen or ():
        if c not in ALL_CONFIGS:
            parser.error(f"unknown configuration {c!r}; known: {', '.join(ALL_CONFIGS)}")
    wanted = set(chosen or MAIN_CONFIGS)
    wanted_proxies = sorted({PROXY_CONFIGS[c][0] for c in wanted if c in PROXY_CONFIGS})
    binaries = ensure_installed(wanted_proxies) if wanted_proxies else {}
    missing = {name for name, path in binaries.items() if path is None}
    for name in missing:
        print(f"{name} not available: its configurations are skipped", file=sys.stderr)

    load_before = os.getloadavg()
    print(
        f"fast mean {settings.fast_mean * 1000:g} ms; warm-up {settings.warmup:g}s, "
        f"window {settings.window:g}s; load average before: {load_before[0]:.2f}"
    )
    results: dict[str, dict[str, dict[str, Any]]] = {}
    ideals: dict[str, float] = {}
    started = time.monotonic()
    for name in scenarios:
        scenario = SCENARIOS[name]
        configs = list(chosen or (DEGRADE_CONFIGS if scenario.degrade else MAIN_CONFIGS))
        configs = [c for c in configs if PROXY_CONFIGS.get(c, ("",))[0] not in missing]
        ideals[name] = ideal_throughput(scenario, settings.backends(scenario))
        results[name] = {}
        for config in configs:
            # Common random numbers: every configuration of a scenario sees the same
            # arrivals and the same service-time draws, so a difference between them is
            # the balancing, not the dice (an 8 s open-loop window alone varies by ~4%).
            row = run_one(name, config, settings, seed=args.seed)
            results[name][config] = row
            print(
                f"  {name:10s} {config:22s} {row['throughput']:6.1f} req/s  "
                f"p50 {_fmt_s(row['p50']):>7s}  mean {_fmt_s(row['mean']):>7s}  "
                f"p99 {_fmt_s(row['p99']):>7s}  p99.9 {_fmt_s(row['p999']):>7s}  "
                f"errors {row['failed']:4d}  hedges {_hedges(row)}  "
                f"loadgen {100 * row['loadgen_cpu']:3.0f}%",
                flush=True,
            )
        print(table(name, results[name], ideals[name]))
    load_after = os.getloadavg()
    checks = goals(results)
    for line in checks:
        print(line)

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python benchmarks/bench_balance.py " + " ".join(argv or sys.argv[1:]),
        "settings": attrs.asdict(settings),
        "ideal_throughput": ideals,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cpus": os.cpu_count(),
        "versions": _versions(binaries),
        "elapsed_s": time.monotonic() - started,
        "goals": checks,
    }
    (args.out / "balance.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    md = [f"# bench_balance\n\n`{meta['command'].strip()}`\n"]
    md.append(
        f"Load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on "
        f"{os.cpu_count()} CPUs; elapsed {meta['elapsed_s']:.0f} s.\n"
    )
    md += [table(name, results[name], ideals[name]) for name in results]
    md += ["\n".join(f"- {c}" for c in checks) + "\n"]
    (args.out / "balance.md").write_text("\n".join(md))
    print(
        f"wrote {args.out / 'balance.json'}, {args.out / 'balance.md'} in {meta['elapsed_s']:.0f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

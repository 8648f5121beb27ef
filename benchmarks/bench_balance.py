"""embedbalance against HAProxy and nginx, side by side, in one run.

What it answers: a user can put a proxy in front of the embedding workers instead of
balancing inside the app. Which does better when replicas differ in speed, when one
dies mid-run, when several client processes balance independently, and when one slows
down? Every configuration gets the same backends (fresh processes each time, so no
queue leaks from one run into the next), the same closed-loop load and the same
measurement window.

Scenarios (backends: three fast with 8 slots, one 6x slower with 2 slots):

- ``a`` heterogeneous, steady;
- ``b`` as ``a``, a fast backend SIGKILLed at 30% of the window, restarted at 60%;
- ``c`` as ``a``, the users split over four client processes (each its own balancer;
  the proxies see the four as clients of one proxy);
- ``d`` as ``a``, one fast backend becomes 6x slower at 50% of the window.

Service times are scaled up (fast mean 150 ms by default, where a small GPU model
answers in tens of ms) so that the load generator stays well under half a core on a
2-core machine: queueing behaviour scales with the service time, CPU cost per request
does not. Results: tables on stdout, ``bench-results/balance.json`` and ``.md``;
``--img-dir docs/img`` also redraws the documentation's figures.

Run: ``python benchmarks/bench_balance.py`` (about 10 minutes), ``--quick`` (under 2),
``--scenarios a,b``, ``--configs "HAProxy leastconn,PeakEwma"``.
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
#: Reference only (scenario a): the proxy with hand-set capacity weights — what the
#: balancers should learn without being told.
WEIGHTED_REFERENCE = "HAProxy leastconn (weighted)"
BALANCERS = (
    "RoundRobin",
    "LeastConnections",
    "PowerOfTwoChoices",
    "PeakEwma",
    "ShortestExpectedDelay",
    "LeastOutstandingTokens",
    "GpuPriority",
)
ALL_CONFIGS = (*PROXY_CONFIGS, *BALANCERS)
#: The library's default balancer: the one the goals are about.
DEFAULT = "ShortestExpectedDelay"
QUICK_CONFIGS = ("HAProxy leastconn", "nginx least_conn", "LeastConnections", "PeakEwma", DEFAULT)
SCENARIOS = {
    "a": "heterogeneous (3 fast x 8 slots, 1 slow x 2 slots, 6x slower)",
    "b": "(a) + a fast backend SIGKILLed at 30% of the window, restarted at 60%",
    "c": "(a) with four client processes (each its own balancer) vs one proxy",
    "d": "(a) + one fast backend 6x slower from 50% of the window",
}
PERCENTILES = (50, 90, 99, 99.9)


@attrs.frozen
class BackendSpec:
    """One emulated replica: ``slots`` concurrent requests, lognormal service times."""

    slots: int
    mean: float
    cv: float = 0.3

    @property
    def capacity(self) -> float:
        """Requests per second it completes when saturated."""
        return self.slots / self.mean


@attrs.frozen
class Settings:
    fast_mean: float = 0.15
    slow_factor: float = 6.0
    cv: float = 0.3
    users: int = 64
    warmup: float = 3.0
    window: float = 10.0
    drain: float = 3.0
    ramp: float | None = None  # None: half the warm-up
    processes_c: int = 4
    health_interval: float = 0.5

    def backends(self) -> list[BackendSpec]:
        fast = BackendSpec(8, self.fast_mean, self.cv)
        slow = BackendSpec(2, self.fast_mean * self.slow_factor, self.cv)
        return [fast, fast, fast, slow]


def ideal_throughput(scenario: str, specs: Sequence[BackendSpec], window: float) -> float:
    """Servers' capacity averaged over the window, given the scenario's events."""
    full = sum(b.capacity for b in specs)
    if scenario == "b":  # specs[0] gone from 30% to 60% of the window
        return full - specs[0].capacity * 0.3
    if scenario == "d":  # specs[0] at 1/6 of its capacity for the second half
        return full - specs[0].capacity * (1 - 1 / 6) * 0.5
    return full


# -- processes ---------------------------------------------------------------------


class Backends:
    """The emulated replicas of one run, each its own process on its own port."""

    def __init__(self, specs: Sequence[BackendSpec], seed: int) -> None:
        self.specs = list(specs)
        self.ports = [free_port() for _ in specs]
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
    if config in PROXY_CONFIGS or config == WEIGHTED_REFERENCE:
        kind, algorithm = PROXY_CONFIGS.get(config, ("haproxy", "leastconn"))
        weights = None
        if config == WEIGHTED_REFERENCE:
            low = min(b.capacity for b in backends.specs)
            weights = tuple(max(1, min(256, round(b.capacity / low))) for b in backends.specs)
        spec = ProxySpec(
            kind,
            algorithm,
            free_port(),
            addrs,
            weights=weights,
            check_interval=settings.health_interval,
        )
        return {"kind": "url", "url": f"http://127.0.0.1:{spec.port}"}, spec
    best = max(b.capacity for b in backends.specs)
    entries = []
    for url, b in zip(backends.urls(), backends.specs, strict=True):
        entry: dict[str, Any] = {"url": url}
        if config == "GpuPriority":  # tiers from capacity: the big boxes first
            entry["tier"] = 0 if b.capacity >= best / 2 else 1
        entries.append(entry)
    target = {
        "kind": "embedbalance",
        "balancer": config,
        "backends": entries,
        "health_interval": settings.health_interval,
        "attempts": 3,
        "attempt_timeout": None,
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


def summarise(
    parts: Sequence[dict[str, Any]], window_start: float, window: float
) -> dict[str, Any]:
    """Throughput = successes completed inside the window ÷ window; latency percentiles
    over successes completed inside it; failures over the whole run."""
    ends = np.concatenate([np.asarray(p["ends"], float) for p in parts])
    lats = np.concatenate([np.asarray(p["latencies"], float) for p in parts])
    oks = np.concatenate([np.asarray(p["ok"], bool) for p in parts])
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
        "p90": float(pct[1]),
        "p99": float(pct[2]),
        "p999": float(pct[3]),
        "failed": int((~oks).sum()),
        "errors": errors,
        "unfinished": int(sum(p["unfinished"] for p in parts)),
        "loadgen_cpu": float(cpu / wall) if wall > 0 else float("nan"),
        "processes": len(parts),
    }


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


def run_one(scenario: str, config: str, settings: Settings, seed: int) -> dict[str, Any]:
    """Fresh backends (and proxy), one load run with the scenario's events, a summary."""
    backends = Backends(settings.backends(), seed)
    proxy: Managed | None = None
    timers: list[threading.Timer] = []
    loaders: list[subprocess.Popen[bytes]] = []
    try:
        backends.start()
        target, proxy_spec = _target(config, backends, settings)
        if proxy_spec is not None:
            proxy = start_proxy(proxy_spec)
        processes = settings.processes_c if scenario == "c" else 1
        start_at = time.monotonic() + 1.0 + 0.3 * processes  # let every process import
        window_start = start_at + settings.warmup
        spec = {
            "target": target,
            "users": settings.users // processes,
            "warmup": settings.warmup,
            "window": settings.window,
            "start_at": start_at,
            "drain_timeout": settings.drain,
            "ramp": settings.warmup / 2 if settings.ramp is None else settings.ramp,
        }
        loaders = [_spawn_load(spec) for _ in range(processes)]
        events: list[tuple[float, Callable[[], None]]] = []
        if scenario == "b":
            events = [
                (0.3, lambda: backends.kill(0)),
                (0.6, lambda: backends.start_one(0, wait=False)),
            ]
        elif scenario == "d":
            url = backends.urls()[0]
            events = [(0.5, lambda: httpx.post(f"{url}/admin/slowdown?factor=6", timeout=5))]
        for at, action in events:
            delay = window_start + at * settings.window - time.monotonic()
            timer = threading.Timer(max(0.0, delay), action)
            timer.start()
            timers.append(timer)
        budget = start_at - time.monotonic() + settings.warmup + settings.window
        parts = [_collect(p, timeout=budget + settings.drain + 30) for p in loaders]
        for timer in timers:
            timer.join()
        row = summarise(parts, window_start, settings.window)
        row["timeline"] = timeline(parts, window_start, settings.window)
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


def table(scenario: str, rows: dict[str, dict[str, Any]], ideal: float) -> str:
    """One scenario as a Markdown table."""
    head = (
        f"### ({scenario}) {SCENARIOS[scenario]}\n\n"
        f"Ideal throughput from the servers' capacity: {ideal:.1f} req/s.\n\n"
        "| configuration | req/s | % ideal | p50 | p90 | p99 | p99.9 | failed "
        "| loadgen CPU |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['throughput']:.1f} | {100 * r['throughput'] / ideal:.0f}% "
            f"| {_fmt_s(r['p50'])} | {_fmt_s(r['p90'])} | {_fmt_s(r['p99'])} "
            f"| {_fmt_s(r['p999'])} | {r['failed']} | {100 * r['loadgen_cpu']:.0f}% |"
        )
    return head + "\n".join(lines) + "\n"


def goals(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The issue's goals on (a) and (b), checked against this run."""
    out = []
    for sc in ("a", "b"):
        rows = results.get(sc, {})
        ours, ref = rows.get(DEFAULT), rows.get("HAProxy leastconn")
        if ours is None or ref is None:
            continue
        t_ratio = ours["throughput"] / ref["throughput"] if ref["throughput"] else float("nan")
        p_ratio = ours["p99"] / ref["p99"] if ref["p99"] else float("nan")
        out.append(
            f"({sc}) {DEFAULT} (default) vs HAProxy leastconn: throughput {t_ratio:.2f}x (goal >= 1.00: "
            f"{'met' if t_ratio >= 1 else 'missed'}), p99 {p_ratio:.2f}x (goal <= 0.20: "
            f"{'met' if p_ratio <= 0.2 else 'missed'})"
            + (
                f", failed {ours['failed']} (goal 0: {'met' if ours['failed'] == 0 else 'missed'}"
                f"; HAProxy leastconn lost {ref['failed']})"
                if sc == "b"
                else ""
            )
        )
    return out


def plot(
    results: dict[str, dict[str, dict[str, Any]]], ideals: dict[str, float], out: Path
) -> None:
    """Throughput (% of ideal) and p99 per configuration, one panel pair per scenario;
    and scenario (b)'s timeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    scenarios = [s for s in SCENARIOS if s in results]
    fig, axes = plt.subplots(2, len(scenarios), figsize=(4.2 * len(scenarios), 7), squeeze=False)
    for j, sc in enumerate(scenarios):
        names = list(results[sc])
        tput = [100 * results[sc][n]["throughput"] / ideals[sc] for n in names]
        p99 = [results[sc][n]["p99"] for n in names]
        colors = ["tab:gray" if n.startswith(("HAProxy", "nginx")) else "tab:blue" for n in names]
        axes[0][j].barh(names, tput, color=colors)
        axes[0][j].set_xlabel("throughput, % of ideal")
        axes[0][j].set_title(f"({sc})")
        axes[0][j].invert_yaxis()
        axes[1][j].barh(names, p99, color=colors)
        axes[1][j].set_xscale("log")
        axes[1][j].set_xlabel("p99 latency, s (log)")
        axes[1][j].invert_yaxis()
    fig.suptitle("Proxies (gray) vs embedbalance balancers (blue)")
    fig.tight_layout()
    fig.savefig(out / "bench-balance.png", dpi=110)
    plt.close(fig)
    if "b" in results:
        fig, ax = plt.subplots(figsize=(8, 4))
        for name in ("HAProxy leastconn", "nginx least_conn", "PeakEwma", DEFAULT, "LeastConnections"):
            row = results["b"].get(name)
            if row is None:
                continue
            tl = row["timeline"]
            (line,) = ax.plot(tl["t"], tl["ok_per_s"], label=f"{name}: successes/s")
            if any(tl["failed_per_s"]):
                ax.plot(
                    tl["t"],
                    tl["failed_per_s"],
                    "--",
                    color=line.get_color(),
                    label=f"{name}: failures/s",
                )
        window = max(results["b"][n]["timeline"]["t"][-1] for n in results["b"]) + 0.5
        for frac, what in ((0.3, "SIGKILL"), (0.6, "restart")):
            ax.axvline(frac * window, color="k", lw=0.8)
            ax.text(frac * window, ax.get_ylim()[1] * 0.95, f" {what}", va="top")
        ax.set_xlabel("seconds into the measurement window")
        ax.set_ylabel("requests per second")
        ax.legend(fontsize=7, loc="lower left")
        ax.set_title("(b) a fast backend dies and comes back")
        fig.tight_layout()
        fig.savefig(out / "bench-balance-kill.png", dpi=110)
        plt.close(fig)


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
    parser.add_argument("--quick", action="store_true", help="short windows, fewer configs")
    parser.add_argument("--scenarios", default="a,b,c,d", help="comma-separated: a,b,c,d")
    parser.add_argument("--configs", default=None, help="comma-separated configuration names")
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--window", type=float, default=None, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=None)
    parser.add_argument("--fast-ms", type=float, default=150.0, help="fast mean service time")
    parser.add_argument(
        "--ramp", type=float, default=None, help="seconds over which users start (half the warm-up)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--img-dir", type=Path, default=None, help="also write figures here")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    settings = Settings(fast_mean=args.fast_ms / 1000.0)
    if args.quick:
        settings = attrs.evolve(settings, warmup=2.0, window=4.0, drain=2.0)
    settings = attrs.evolve(
        settings,
        users=args.users or settings.users,
        window=args.window or settings.window,
        warmup=args.warmup or settings.warmup,
        ramp=args.ramp,
    )
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r}")
    if args.configs:
        configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    else:
        configs = list(QUICK_CONFIGS if args.quick else ALL_CONFIGS)
    known = (*ALL_CONFIGS, WEIGHTED_REFERENCE)
    for c in configs:
        if c not in known:
            parser.error(f"unknown configuration {c!r}; known: {', '.join(known)}")

    wanted_proxies = sorted({PROXY_CONFIGS[c][0] for c in configs if c in PROXY_CONFIGS})
    binaries = ensure_installed(wanted_proxies) if wanted_proxies else {}
    for name, path in binaries.items():
        if path is None:
            print(f"{name} not available: its configurations are skipped", file=sys.stderr)
            configs = [c for c in configs if PROXY_CONFIGS.get(c, (name,))[0] != name]

    load_before = os.getloadavg()
    specs = settings.backends()
    ideals = {s: ideal_throughput(s, specs, settings.window) for s in scenarios}
    print(
        f"backends: {[(b.slots, b.mean) for b in specs]} (slots, mean s); users {settings.users}; "
        f"warm-up {settings.warmup:g}s, window {settings.window:g}s; "
        f"load average before: {load_before[0]:.2f}"
    )
    results: dict[str, dict[str, dict[str, Any]]] = {}
    started = time.monotonic()
    for sc in scenarios:
        names = list(configs)
        if sc == "a" and not args.quick and not args.configs and "haproxy" in binaries:
            names.insert(1, WEIGHTED_REFERENCE)
        results[sc] = {}
        for i, name in enumerate(names):
            row = run_one(sc, name, settings, seed=args.seed + i)
            results[sc][name] = row
            print(
                f"  ({sc}) {name:28s} {row['throughput']:7.1f} req/s  p99 {_fmt_s(row['p99']):>8s}"
                f"  failed {row['failed']:4d}  loadgen CPU {100 * row['loadgen_cpu']:3.0f}%",
                flush=True,
            )
        print(table(sc, results[sc], ideals[sc]))
    load_after = os.getloadavg()
    checks = goals(results)
    for line in checks:
        print(line)

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python benchmarks/bench_balance.py " + " ".join(argv or sys.argv[1:]),
        "settings": attrs.asdict(settings),
        "backends": [attrs.asdict(b) for b in specs],
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
    md += [table(sc, results[sc], ideals[sc]) for sc in results]
    md += ["\n".join(f"- {c}" for c in checks) + "\n"]
    (args.out / "balance.md").write_text("\n".join(md))
    plot(results, ideals, args.out)
    if args.img_dir is not None:
        plot(results, ideals, args.img_dir)
    print(
        f"wrote {args.out / 'balance.json'}, {args.out / 'balance.md'} in {meta['elapsed_s']:.0f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""HAProxy and nginx in front of the benchmark backends: configs and process control.

Why these settings: each proxy gets the configuration a careful operator would give
it for idempotent embedding traffic, so the comparison is against the alternative at
its best, not a strawman:

- active health checks on ``/health`` (HAProxy only: open-source nginx has none, it
  learns from failed requests — ``max_fails``/``fail_timeout``);
- retries on another server, including replay of requests already sent when the
  server died (HAProxy ``retry-on all-retryable-errors`` + ``option redispatch``,
  nginx ``proxy_next_upstream error timeout non_idempotent``) — safe because
  embedding requests are idempotent; ``replay=False`` writes the conservative
  connect-failure-only variant;
- upstream keep-alive (HAProxy ``http-reuse always``, nginx ``keepalive``), one
  thread/worker (two cores are shared with the backends and the load generator).

Processes run in the foreground (no daemonising), are tracked by PID and stopped by
PID, so nothing started here outlives the benchmark.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import httpx

__all__ = [
    "Managed",
    "ProxySpec",
    "ensure_installed",
    "find_binary",
    "free_port",
    "free_ports",
    "haproxy_config",
    "nginx_config",
    "start_proxy",
    "wait_http",
]

SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")
PACKAGES = {"haproxy": "haproxy", "nginx": "nginx"}


def find_binary(name: str) -> str | None:
    """A binary on PATH, or in an sbin folder that a non-root PATH often lacks."""
    found = shutil.which(name)
    if found:
        return found
    for folder in SBIN:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure_installed(names: Sequence[str] = ("haproxy", "nginx")) -> dict[str, str | None]:
    """Install missing proxies from Debian's packages when root with apt-get.

    A ``policy-rc.d`` that forbids service starts is put in place for the install
    (and removed only if we created it), so the packages never start system daemons
    on port 80: the benchmark runs its own instances on loopback.
    """
    missing = [n for n in names if find_binary(n) is None]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        policy = Path("/usr/sbin/policy-rc.d")
        created = not policy.exists()
        if created:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(
                ["apt-get", "update", "-q"], env=env, check=False, stdout=subprocess.DEVNULL
            )
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "--no-install-recommends"]
                + [PACKAGES[n] for n in missing],
                env=env,
                check=False,
                stdout=subprocess.DEVNULL,
            )
        finally:
            if created:
                policy.unlink(missing_ok=True)
    return {n: find_binary(n) for n in names}


def free_port() -> int:
    """A currently free loopback TCP port (the usual bind-to-0 trick)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback TCP ports. Every socket stays bound until all are
    picked: ports picked one at a time can repeat (the kernel may hand a just-closed
    port out again), and two replicas on one port fail a run."""
    import contextlib
    import socket

    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


@attrs.frozen
class ProxySpec:
    """One proxy configuration: ``kind`` is ``haproxy`` or ``nginx``; ``algorithm`` is
    the proxy's own name for it (``leastconn``, ``roundrobin``, ``least_conn``)."""

    kind: str
    algorithm: str
    port: int
    backends: tuple[str, ...]  # "127.0.0.1:PORT"
    weights: tuple[int, ...] | None = None  # None: every server weight 1
    replay: bool = True
    check_interval: float = 0.5  # seconds between HAProxy health checks
    connect_timeout: float = 1.0
    server_timeout: float = 60.0

    def __attrs_post_init__(self) -> None:
        if self.kind not in ("haproxy", "nginx"):
            raise ValueError(f"unknown proxy kind {self.kind!r}")
        allowed = {"haproxy": ("leastconn", "roundrobin"), "nginx": ("least_conn", "round_robin")}
        if self.algorithm not in allowed[self.kind]:
            raise ValueError(f"{self.kind} has no algorithm {self.algorithm!r} here")
        if self.weights is not None and len(self.weights) != len(self.backends):
            raise ValueError("one weight per backend")
        for b in self.backends:
            if not b.startswith("127.0.0.1:"):
                raise ValueError(f"benchmark traffic stays on loopback, got {b!r}")

    @property
    def label(self) -> str:
        name = {"haproxy": "HAProxy", "nginx": "nginx"}[self.kind]
        return f"{name} {self.algorithm}" + (" (weighted)" if self.weights else "")


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def haproxy_config(spec: ProxySpec, workdir: Path) -> str:
    """The haproxy.cfg text for ``spec`` (``workdir`` holds nothing HAProxy needs)."""
    retry_on = "all-retryable-errors" if spec.replay else "conn-failure"
    lines = [
        "global",
        "    nbthread 1",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode http",
        f"    timeout connect {_ms(spec.connect_timeout)}",
        "    timeout client 120s",
        f"    timeout server {_ms(spec.server_timeout)}",
        "    timeout check 1s",
        "    timeout http-keep-alive 60s",
        "    option http-keep-alive",
        "",
        "frontend fe",
        f"    bind 127.0.0.1:{spec.port}",
        "    default_backend workers",
        "",
        "backend workers",
        f"    balance {spec.algorithm}",
        "    option httpchk GET /health",
        "    http-reuse always",
        "    retries 3",
        f"    retry-on {retry_on}",
        "    option redispatch 1",
        "    option http-buffer-request",
    ]
    inter = _ms(spec.check_interval)
    for i, b in enumerate(spec.backends):
        weight = f" weight {spec.weights[i]}" if spec.weights else ""
        lines.append(f"    server s{i} {b} check inter {inter} fall 2 rise 2 maxconn 1000{weight}")
    return "\n".join(lines) + "\n"


def nginx_config(spec: ProxySpec, workdir: Path) -> str:
    """The nginx.conf text for ``spec``; logs, pid and temp files go under ``workdir``."""
    balance = "    least_conn;\n" if spec.algorithm == "least_conn" else ""
    servers = "".join(
        f"        server {b}{f' weight={spec.weights[i]}' if spec.weights else ''}"
        " max_fails=1 fail_timeout=2s;\n"
        for i, b in enumerate(spec.backends)
    )
    next_upstream = "error timeout http_502 http_503" + (" non_idempotent" if spec.replay else "")
    w = workdir
    return f"""worker_processes 1;
daemon off;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {w}/body;
    proxy_temp_path {w}/proxy;
    fastcgi_temp_path {w}/fastcgi;
    uwsgi_temp_path {w}/uwsgi;
    scgi_temp_path {w}/scgi;
    upstream workers {{
{balance}{servers}        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{spec.port};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://workers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout {_ms(spec.connect_timeout)};
            proxy_read_timeout {_ms(spec.server_timeout)};
            proxy_next_upstream {next_upstream};
            proxy_next_upstream_tries 3;
        }}
    }}
}}
"""


@attrs.define
class Managed:
    """A child process we started; :meth:`stop` ends exactly it, by PID."""

    name: str
    proc: subprocess.Popen[bytes]
    workdir: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would (the "backend dies mid-run" scenario)."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; removes the work folder."""
        if self.alive():
            # nginx's master takes SIGQUIT for a graceful stop and SIGTERM for a fast
            # one; both stop its workers too. HAProxy stops on SIGTERM.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def wait_http(url: str, timeout: float = 10.0, proc: Managed | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.05)
    raise TimeoutError(f"{url} not up after {timeout}s ({last!r})")


def start_proxy(spec: ProxySpec, binary: str | None = None) -> Managed:
    """Write the config to a fresh temp folder, validate it, start the proxy in the
    foreground, and wait until it forwards ``/health``."""
    binary = binary or find_binary(spec.kind)
    if binary is None:
        raise FileNotFoundError(f"{spec.kind} is not installed")
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{spec.kind}-"))
    workdir.chmod(0o755)
    if spec.kind == "haproxy":
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(haproxy_config(spec, workdir))
        check = [binary, "-c", "-q", "-f", str(cfg)]
        cmd = [binary, "-db", "-f", str(cfg)]
    else:
        cfg = workdir / "nginx.conf"
        cfg.write_text(nginx_config(spec, workdir))
        check = [binary, "-t", "-q", "-p", str(workdir), "-c", str(cfg)]
        cmd = [binary, "-p", str(workdir), "-c", str(cfg)]
    done = subprocess.run(check, capture_output=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"{spec.kind} rejected its config: {done.stderr.decode()[-2000:]}")
    log = (workdir / "stderr.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    managed = Managed(spec.label, proc, workdir)
    try:
        wait_http(f"http://127.0.0.1:{spec.port}/health", proc=managed)
    except BaseException:
        managed.stop()
        raise
    return managed

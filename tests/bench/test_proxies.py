"""HAProxy and nginx config writers: the settings the comparison relies on are there,
and the real binaries accept the configs and forward traffic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from _proxies import ProxySpec, free_port, haproxy_config, nginx_config, start_proxy, wait_http

from .conftest import BENCH, require_binary

BACKENDS = ("127.0.0.1:9001", "127.0.0.1:9002")


def test_haproxy_config_has_checks_retries_and_reuse(tmp_path: Path) -> None:
    """The HAProxy config balances leastconn, checks /health, replays and reuses connections."""
    text = haproxy_config(ProxySpec("haproxy", "leastconn", 8080, BACKENDS), tmp_path)
    assert "balance leastconn" in text
    assert "option httpchk GET /health" in text
    assert "retry-on all-retryable-errors" in text
    assert "option redispatch" in text
    assert "http-reuse always" in text
    assert text.count(" check inter 500ms") == 2
    assert "bind 127.0.0.1:8080" in text


def test_conservative_variants_do_not_replay(tmp_path: Path) -> None:
    """``replay=False`` retries only requests that never reached a server."""
    h = haproxy_config(ProxySpec("haproxy", "roundrobin", 1, BACKENDS, replay=False), tmp_path)
    n = nginx_config(ProxySpec("nginx", "least_conn", 1, BACKENDS, replay=False), tmp_path)
    assert "retry-on conn-failure" in h
    assert "non_idempotent" not in n


def test_nginx_config_has_least_conn_keepalive_and_weights(tmp_path: Path) -> None:
    """The nginx config balances least_conn with upstream keep-alive and per-server weights."""
    spec = ProxySpec("nginx", "least_conn", 8081, BACKENDS, weights=(5, 1))
    text = nginx_config(spec, tmp_path)
    assert "least_conn;" in text
    assert "keepalive 256;" in text
    assert 'proxy_set_header Connection "";' in text
    assert "server 127.0.0.1:9001 weight=5" in text
    assert "non_idempotent" in text
    assert str(tmp_path) in text  # pid, logs and temp files stay in the work folder


def test_spec_refuses_remote_backends_and_unknown_algorithms() -> None:
    """Benchmark traffic must stay on loopback, and algorithm names are checked."""
    with pytest.raises(ValueError, match="loopback"):
        ProxySpec("haproxy", "leastconn", 1, ("10.0.0.1:80",))
    with pytest.raises(ValueError, match="algorithm"):
        ProxySpec("nginx", "leastconn", 1, BACKENDS)


@pytest.mark.system
@pytest.mark.parametrize(("kind", "algorithm"), [("haproxy", "leastconn"), ("nginx", "least_conn")])
def test_real_proxy_forwards_to_both_backends(kind: str, algorithm: str) -> None:
    """The proxy starts from the written config, forwards POSTs, and stops by PID."""
    require_binary(kind)
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(
            [sys.executable, str(BENCH / "latency_server.py"), "--port", str(p), "--mean", "0.01"],
            stdout=subprocess.DEVNULL,
        )
        for p in ports
    ]
    try:
        for p in ports:
            wait_http(f"http://127.0.0.1:{p}/health")
        spec = ProxySpec(kind, algorithm, free_port(), tuple(f"127.0.0.1:{p}" for p in ports))
        proxy = start_proxy(spec)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{spec.port}") as client:
                codes = {client.post("/embed", json={}).status_code for _ in range(6)}
            assert codes == {200}
        finally:
            proxy.stop()
        assert not proxy.alive()
        assert proxy.workdir is not None
        assert not proxy.workdir.exists()
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)

"""``embedbalance check`` against real workers: agreeing replicas pass, a replica that
serves different vectors (same model name and dimension, another pooling) is named and
the exit status is non-zero."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.helpers.worker_proc import WorkerProcess
from tests.integrations._checks import dead_url

from embedbalance.cli import main
from embedbalance.cli.check import check_replicas

CANARY = "The quick brown fox jumps over the lazy dog."


def test_agreeing_replicas_pass(
    cli_workers: dict[str, WorkerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    """If this fails, check cries wolf on replicas that serve the same model the same
    way (one merely slower), or stops reading /info and the API flavours."""
    urls = [cli_workers["fast"].url, cli_workers["slow"].url]
    assert main(["check", *urls]) == 0
    out = capsys.readouterr().out
    assert "OK: all replicas agree" in out
    report = check_replicas(urls, canary=CANARY, tolerance=0.01)
    for r in report.replicas:
        assert r.health == "ok"
        assert r.flavours == ["openai", "tei"]
        assert r.dimension == 384
        assert "MiniLM" in (r.model or "")
        assert r.distance is not None
        assert r.distance < 1e-4


def test_replica_with_different_vectors_is_named(
    cli_workers: dict[str, WorkerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    """If this fails, a replica that returns other vectors under the same model name and
    dimension (here: CLS instead of mean pooling) slips through, or is not the one named."""
    odd = cli_workers["cls"].url
    urls = [cli_workers["fast"].url, odd, cli_workers["slow"].url]
    assert main(["check", "--json", *urls]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] is False
    bad = [r for r in payload["replicas"] if not r["ok"]]
    assert [r["url"] for r in bad] == [odd]
    assert "different vectors" in bad[0]["problems"][0]
    assert bad[0]["model"] == payload["replicas"][0]["model"]  # same name: only vectors tell


def test_unreachable_replica_fails_and_the_table_names_it(
    cli_workers: dict[str, WorkerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    """If this fails, a dead replica is skipped silently instead of failing the check."""
    dead = dead_url()
    assert main(["check", cli_workers["fast"].url, dead]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {dead}: unreachable" in out


def test_python_dash_m_runs_the_same_command(cli_workers: dict[str, WorkerProcess]) -> None:
    """If this fails, ``python -m embedbalance`` is not the documented twin of the
    ``embedbalance`` script (or its exit status is lost)."""
    ok = subprocess.run(
        [sys.executable, "-m", "embedbalance", "check", cli_workers["fast"].url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedbalance",
            "check",
            cli_workers["fast"].url,
            cli_workers["cls"].url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert "different vectors" in bad.stdout


def test_usage_error_exits_2() -> None:
    """If this fails, a wrong command line exits 0 or 1 and scripts cannot tell it from
    a real disagreement."""
    with pytest.raises(SystemExit) as exc:
        main(["check"])
    assert exc.value.code == 2

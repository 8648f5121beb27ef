"""The Grafana dashboard: it queries only metrics the code exports, covers all of them,
and every query is valid PromQL."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_files import DEPLOY, system_binary

DASHBOARD = DEPLOY / "grafana" / "embedbalance.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC = re.compile(r"\b(embedbalance_[a-zA-Z0-9_]+)\b")


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _queries() -> list[str]:
    """Every PromQL text in the dashboard: panel targets and templating queries."""
    dashboard = _dashboard()
    exprs = [t["expr"] for p in _panels(dashboard["panels"]) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["definition"])
    return exprs


def _exported() -> set[str]:
    from embedbalance.metrics import METRIC_NAMES as CLIENT
    from embedbalance_worker.metrics import METRIC_NAMES as WORKER

    return set(CLIENT) | set(WORKER)


def _family(name: str, exported: set[str]) -> str | None:
    """The exported family a queried series name belongs to, or None."""
    if name in exported:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        # Counters are queried by their _total name; only other families have these series.
        if base != name and base in exported and not base.endswith("_total"):
            return base
    return None


def test_dashboard_references_only_exported_metrics() -> None:
    """Every embedbalance_* name in the dashboard's PromQL is a family the client or worker exports
    (histograms via their series suffixes)."""
    exported = _exported()
    unknown = {
        name
        for expr in _queries()
        for name in METRIC.findall(expr)
        if _family(name, exported) is None
    }
    assert not unknown, f"dashboard queries metrics nobody exports: {sorted(unknown)}"


def test_dashboard_covers_every_exported_metric() -> None:
    """Each exported family is on at least one panel, so no new metric goes unwatched silently."""
    exported = _exported()
    shown = {_family(name, exported) for expr in _queries() for name in METRIC.findall(expr)}
    assert exported - shown == set()


def test_dashboard_structure_is_importable() -> None:
    """Panel ids are unique, every target has a refId and the Prometheus datasource variable, and
    the uid is stable."""
    dashboard = _dashboard()
    assert dashboard["uid"] == "embedbalance"
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["description"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            for used in re.findall(r"\$(\w+)", target["expr"]):
                assert used in variables or used.startswith("__"), used


@pytest.mark.system
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every query parses as PromQL once Grafana's variables are filled in, checked by promtool."""
    promtool = system_binary("promtool")
    exprs = []
    for expr in _queries():
        expr = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*")
        # label_values() is Grafana's, not PromQL: check the metric selector inside it.
        expr = re.sub(r"label_values\(([^,]+),[^)]*\)", r"\1", expr)
        assert "$" not in expr, expr
        exprs.append(expr)
    rules = [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

"""``embedbalance check``: do these replicas serve the same thing?

A balancer assumes its backends are interchangeable. When they are not — one pod still
runs last week's model, one was started with another pooling or without normalisation,
one serves only the OpenAI route — every request it sends there returns vectors that do
not match the rest of the index, and nothing fails loudly. This command asks each
replica directly (no balancing), compares, and names the one that differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import attrs
import httpx
import numpy as np

from . import FAILED, OK

__all__ = ["CheckReport", "ReplicaReport", "check_replicas", "run_check_command"]


@attrs.define
class ReplicaReport:
    """What one replica answered; ``problems`` lists why it disagrees or fails."""

    url: str
    health: str = "unreachable"
    model: str | None = None
    dimension: int | None = None
    flavours: list[str] = attrs.field(factory=list)
    distance: float | None = None
    cosine: float | None = None
    reference: bool = False
    problems: list[str] = attrs.field(factory=list)
    vector: Any = attrs.field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self, filter=lambda a, _: a.name != "vector")
        out["ok"] = self.ok
        return out


@attrs.define
class CheckReport:
    """Every replica's report; ``ok`` only when all are healthy and agree."""

    replicas: list[ReplicaReport]
    tolerance: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.replicas)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "tolerance": self.tolerance,
            "replicas": [r.as_dict() for r in self.replicas],
        }


def _probe(http: httpx.Client, url: str, canary: str) -> ReplicaReport:
    report = ReplicaReport(url=url)
    try:
        health = http.get(url + "/health")
    except httpx.HTTPError as exc:
        report.problems.append(f"unreachable: {type(exc).__name__}: {exc}")
        return report
    report.health = "ok" if health.status_code == 200 else f"HTTP {health.status_code}"
    if health.status_code != 200:
        report.problems.append(f"/health answered HTTP {health.status_code}")
    try:
        info = http.get(url + "/info")
        if info.status_code == 200 and isinstance(info.json(), dict):
            body = info.json()
            model = body.get("model_id") or body.get("model")
            report.model = model if isinstance(model, str) else None
            dimension = body.get("dimension")
            report.dimension = dimension if isinstance(dimension, int) else None
    except (httpx.HTTPError, ValueError):
        pass  # /info is optional (OpenAI-compatible servers rarely have it)
    vectors: dict[str, np.ndarray[Any, Any]] = {}
    requests: tuple[tuple[str, str, dict[str, Any]], ...] = (
        ("tei", "/embed", {"inputs": [canary]}),
        ("openai", "/v1/embeddings", {"input": [canary], "encoding_format": "float"}),
    )
    for flavour, path, body in requests:
        if flavour == "openai" and report.model:
            body["model"] = report.model
        try:
            response = http.post(url + path, json=body)
            if response.status_code != 200:
                continue
            payload = response.json()
            row = payload[0] if flavour == "tei" else payload["data"][0]["embedding"]
            vectors[flavour] = np.asarray(row, dtype=np.float64)
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
            continue
    report.flavours = sorted(vectors)
    if not vectors:
        report.problems.append("answered neither TEI /embed nor OpenAI /v1/embeddings")
        return report
    vector = vectors["tei"] if "tei" in vectors else vectors["openai"]
    if (
        "tei" in vectors
        and "openai" in vectors
        and _distance(vectors["tei"], vectors["openai"]) > 1e-3
    ):
        report.problems.append("its TEI and OpenAI routes return different vectors")
    report.vector = vector
    if report.dimension is None:
        report.dimension = int(vector.shape[0])
    elif report.dimension != vector.shape[0]:
        report.problems.append(
            f"/info says dimension {report.dimension} but it returned {vector.shape[0]}"
        )
    return report


def _distance(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-12))


def _cosine(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float | None:
    if a.shape != b.shape:
        return None
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def _odd_ones(reports: list[ReplicaReport], attr: str) -> None:
    """Name the replicas whose ``attr`` differs from the most common value."""
    values = [getattr(r, attr) for r in reports if getattr(r, attr) is not None]
    if len(set(values)) <= 1:
        return
    common = max(set(values), key=lambda v: (values.count(v), -values.index(v)))
    for r in reports:
        value = getattr(r, attr)
        if value is not None and value != common:
            r.problems.append(f"{attr} is {value!r}; the others serve {common!r}")


def check_replicas(
    urls: list[str],
    *,
    canary: str,
    tolerance: float,
    api_key: str | None = None,
    timeout: float = 30.0,
    transport: httpx.BaseTransport | None = None,
) -> CheckReport:
    """Probe every replica and compare; the replica most others agree with is the
    reference for the canary (ties: the first given)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    with httpx.Client(timeout=timeout, headers=headers, transport=transport) as http:
        reports = [_probe(http, url.rstrip("/"), canary) for url in urls]
    _odd_ones(reports, "model")
    _odd_ones(reports, "dimension")
    answered = [r for r in reports if r.vector is not None]
    if answered:
        agree = [
            sum(_distance(r.vector, o.vector) <= tolerance for o in answered) for r in answered
        ]
        ref = answered[agree.index(max(agree))]
        ref.reference = True
        for r in answered:
            r.distance = _distance(r.vector, ref.vector)
            r.cosine = _cosine(r.vector, ref.vector)
            if r is not ref and r.distance > tolerance:
                r.problems.append(
                    f"serves different vectors for the canary text (relative distance "
                    f"{r.distance:.4g} > {tolerance:g} from {ref.url})"
                )
    return CheckReport(reports, tolerance)


def format_table(report: CheckReport) -> str:
    """The human-readable report, one line per replica, then one line per problem."""
    rows = [("replica", "health", "api", "model", "dim", "canary")]
    for r in report.replicas:
        if r.reference:
            canary = "reference"
        elif r.distance is None:
            canary = "-"
        else:
            canary = f"{'ok' if r.distance <= report.tolerance else 'DIFFERS'} ({r.distance:.2g})"
        rows.append(
            (
                r.url,
                r.health,
                "+".join(r.flavours) or "-",
                r.model or "?",
                str(r.dimension or "?"),
                canary,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    for r in report.replicas:
        lines.extend(f"FAIL {r.url}: {problem}" for problem in r.problems)
    bad = sum(not r.ok for r in report.replicas)
    total = len(report.replicas)
    lines.append(
        "OK: all replicas agree" if report.ok else f"{bad} of {total} replicas disagree or fail"
    )
    return "\n".join(lines)


def run_check_command(args: argparse.Namespace) -> int:
    """``embedbalance check``: print the report, exit 1 if any replica disagrees."""
    report = check_replicas(
        list(args.urls),
        canary=args.canary,
        tolerance=args.tolerance,
        api_key=args.api_key,
        timeout=args.timeout,
    )
    if args.json:
        json.dump(report.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(report))
    return OK if report.ok else FAILED

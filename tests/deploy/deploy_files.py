"""Shared loaders for the deployment-file tests: YAML documents, binaries, versions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from system import system_binary  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"

# Contract of the worker's CLI (see docs/worker.md): the port it listens on by default
# and the path of its readiness answer.
WORKER_PORT = 8000
HEALTH_PATH = "/health"


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest we ship (kustomization files are input, not API objects)."""
    return sorted(p for p in KUBE.rglob("*.yaml") if p.name != "kustomization.yaml")


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of one file."""
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def all_objects(paths: list[Path] | None = None) -> list[dict[str, Any]]:
    """Every API object in the given files (default: all shipped manifests)."""
    return [doc for p in (paths or manifest_files()) for doc in load_documents(p)]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def containers(deployment: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from deployment["spec"]["template"]["spec"]["containers"]

"""Reference embedding worker: a local transformers model behind a dynamic batcher.

Never imports ``embedbalance``; the two meet only through the HTTP contract in
``docs/worker.md``.
"""

from __future__ import annotations

from embedbalance_worker.app import WorkerState, create_app, worker_version
from embedbalance_worker.batcher import Batcher, Closed, Overloaded
from embedbalance_worker.config import WorkerConfig
from embedbalance_worker.metrics import METRIC_NAMES
from embedbalance_worker.model import DtypeRejected, EmbeddingModel

__all__ = [
    "METRIC_NAMES",
    "Batcher",
    "Closed",
    "DtypeRejected",
    "EmbeddingModel",
    "Overloaded",
    "WorkerConfig",
    "WorkerState",
    "create_app",
    "worker_version",
]

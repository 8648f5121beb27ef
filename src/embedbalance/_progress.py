"""An optional tqdm progress bar, behind a two-method protocol.

Why optional and lazy: tqdm is an extra (``embedbalance[progress]``); a server that
embeds a few texts per request must neither import it nor print bars.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

__all__ = ["DEFAULT_THRESHOLD", "Progress", "open_progress"]

#: ``progress=None`` shows a bar for jobs of at least this many texts.
DEFAULT_THRESHOLD = 1000


class Progress(Protocol):
    def update(self, n: int) -> Any: ...

    def close(self) -> Any: ...


class _Silent:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def open_progress(
    mode: bool | None, total: int | None, *, threshold: int = DEFAULT_THRESHOLD, desc: str
) -> Progress:
    """A bar counting texts: always for ``True`` (tqdm required), never for ``False``,
    and for ``None`` only when the job size is known, at least ``threshold`` and tqdm
    is installed."""
    if mode is False:
        return _Silent()
    if mode is None and (total is None or total < threshold):
        return _Silent()
    try:
        # Imported by name: tqdm ships no type information, and a bar is all we need.
        tqdm = importlib.import_module("tqdm.auto").tqdm
    except ImportError:
        if mode is None:
            return _Silent()
        raise ImportError(
            "progress=True needs tqdm: pip install 'embedbalance[progress]'"
        ) from None
    bar: Progress = tqdm(total=total, desc=desc, unit="text", dynamic_ncols=True)
    return bar

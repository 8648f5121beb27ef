"""Assertions shared by the client tests."""

from __future__ import annotations

import numpy as np


def assert_rows_match(
    matrix: np.ndarray, texts: list[str], reference: dict[str, np.ndarray]
) -> None:
    """Every row equals its own text's single-request embedding."""
    assert matrix.dtype == np.float32
    assert matrix.shape == (len(texts), 384)
    expected = np.stack([reference[t] for t in texts])
    worst = np.abs(matrix - expected).max(axis=1)
    bad = np.flatnonzero(worst > 1e-4)
    assert bad.size == 0, f"rows {bad[:10].tolist()} differ from their own text's embedding"

"""The mutation tool's sampled score: the interval it prints must hold the sample's
own rate and stay within 0-100 %, or a sampled module could be reported as meeting
its goal on arithmetic alone."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

from hypothesis import given
from hypothesis import strategies as st


def _tool() -> ModuleType:
    path = Path(__file__).parents[1] / "tools" / "mutation.py"
    spec = importlib.util.spec_from_file_location("mutation_tool", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wilson = _tool().wilson


@given(st.integers(1, 2000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_the_interval_holds_the_sample_rate_and_stays_in_range(sample: tuple[int, int]) -> None:
    caught, judged = sample
    low, high = wilson(caught, judged)
    rate = 100 * caught / judged
    assert 0.0 <= low <= high <= 100.0
    assert low - 0.05 <= rate <= high + 0.05  # rounded to one decimal


def test_known_values_and_a_larger_sample_is_narrower() -> None:
    """140 of 150: 88.2-96.3 % (the Wilson formula worked by hand); the same rate on
    four times the sample halves the width, give or take the rounding."""
    assert wilson(140, 150) == (88.2, 96.3)
    assert wilson(0, 0) == (0.0, 100.0)
    narrow = wilson(560, 600)
    assert math.isclose(narrow[1] - narrow[0], (96.3 - 88.2) / 2, abs_tol=0.3)

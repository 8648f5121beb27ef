"""The canary's verdict (majority vote by cosine, or a reference) and its policy object.

Pure logic: random answers from hypothesis, no I/O. The pool's side (no traffic before
a pass, ejection and re-admission) is pinned at the bottom with a manual clock.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embedbalance as eb
from embedbalance.canary import judge, min_row_cosine

ROWS, DIM = 3, 8


def _unit_rows(seed: int, rows: int = ROWS, dim: int = DIM, stream: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, stream])
    out = rng.normal(size=(rows, dim))
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _far_from(base: np.ndarray, seed: int) -> np.ndarray:
    """Rows orthogonal to ``base`` row by row: cosine 0, far below any threshold."""
    other = _unit_rows(seed, *base.shape, stream=1)  # another stream: never ``base`` itself
    other -= np.sum(other * base, axis=1, keepdims=True) * base
    return other / np.linalg.norm(other, axis=1, keepdims=True)


seeds = st.integers(0, 2**32 - 1)
scales = st.floats(0.01, 100.0)


@settings(max_examples=60, deadline=None)
@given(good=st.integers(2, 6), bad=st.integers(1, 5), seed=seeds, bad_seed=seeds, data=st.data())
def test_a_larger_group_outvotes_replicas_that_each_differ(
    good: int, bad: int, seed: int, bad_seed: int, data: st.DataObject
) -> None:
    """Copies of one answer (rescaled, nudged) agree and every replica with its own, far
    answer disagrees, whatever the names. If this fails, a wrong replica is kept in the
    pool or a right one ejected."""
    if bad >= good:
        bad = good - 1
    if bad == 0:
        return
    base = _unit_rows(seed)
    answers: dict[str, np.ndarray] = {}
    for i in range(good):
        scale = data.draw(scales)
        noise = _unit_rows(seed + i + 1) * 1e-3
        answers[f"http://good-{i}"] = (base + noise) * scale
    for i in range(bad):
        answers[f"http://bad-{i}"] = _far_from(base, bad_seed + i)
    order = data.draw(st.permutations(list(answers)))
    verdicts = judge({url: answers[url] for url in order}, 0.99)
    for url, verdict in verdicts.items():
        expected = url.startswith("http://good")
        assert verdict.agrees is expected, (url, verdict)
        if not expected:
            assert verdict.detail.startswith("canary: cosine ")
            assert f"vs majority of {good}" in verdict.detail
            assert verdict.cosine is not None
            assert verdict.cosine < 0.99


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), seed=seeds)
def test_replicas_that_all_differ_give_no_verdict(n: int, seed: int) -> None:
    """A lone replica, or replicas that all disagree with each other, leave no majority:
    no verdict for anyone. If this fails, the canary ejects on a coin toss."""
    base = _unit_rows(seed)
    answers = {"http://r-0": base}
    for i in range(1, n):
        # Each one orthogonal to all the earlier ones (n <= 6 < DIM).
        rows = _unit_rows(seed + i)
        for earlier in answers.values():
            rows -= np.sum(rows * earlier, axis=1, keepdims=True) * earlier
        answers[f"http://r-{i}"] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    verdicts = judge(answers, 0.99)
    assert set(verdicts) == set(answers)
    assert all(v.agrees is None for v in verdicts.values())


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 4), seed=seeds, other=seeds)
def test_a_tie_between_two_groups_gives_no_verdict(size: int, seed: int, other: int) -> None:
    """Two groups of the same size that disagree: nobody can tell which is right, so
    nobody is ejected. If this fails, half the pool goes on a tie."""
    a = _unit_rows(seed)
    b = _far_from(a, other)
    answers = {f"http://a-{i}": a for i in range(size)} | {f"http://b-{i}": b for i in range(size)}
    assert all(v.agrees is None for v in judge(answers, 0.99).values())


@settings(max_examples=60, deadline=None)
@given(seed=seeds, threshold=st.floats(0.5, 1.0), scale=scales, n=st.integers(1, 5))
def test_identical_answers_agree_at_any_threshold_up_to_one(
    seed: int, threshold: float, scale: float, n: int
) -> None:
    """The same vectors (float32, any scale) agree even at threshold 1.0, and agree with
    a reference equal to them. If this fails, rounding ejects a healthy replica."""
    rows = (_unit_rows(seed) * scale).astype(np.float32)
    answers = {f"http://r-{i}": rows.copy() for i in range(n)}
    verdicts = judge(answers, threshold)
    if n >= 2:
        assert all(v.agrees is True for v in verdicts.values())
    by_reference = judge(answers, threshold, rows.astype(np.float64) * 3.0)
    assert all(v.agrees is True for v in by_reference.values())


@settings(max_examples=60, deadline=None)
@given(seed=seeds, other=seeds, threshold=st.floats(0.05, 1.0))
def test_the_reference_decides_alone(seed: int, other: int, threshold: float) -> None:
    """With a reference, a replica agrees exactly when its lowest row cosine with the
    reference reaches the threshold, even against a majority. If this fails, a user's
    known-good vectors are outvoted by a wrong rollout."""
    reference = _unit_rows(seed)
    wrong = _unit_rows(other)
    answers = {"http://w-1": wrong, "http://w-2": wrong, "http://right": reference}
    verdicts = judge(answers, threshold, reference)
    assert verdicts["http://right"].agrees is True
    cos = min_row_cosine(wrong, reference)
    assert verdicts["http://w-1"].agrees is (cos >= threshold - 1e-6)
    assert verdicts["http://w-1"].detail.endswith("vs reference")


def test_another_dimension_never_agrees_and_says_so() -> None:
    """A replica serving vectors of another size is outside the majority, and the
    reason names the shapes. If this fails, a different model is compared as if it
    were the same one (or crashes the check)."""
    base = _unit_rows(1)
    answers = {"http://a": base, "http://b": base, "http://c": _unit_rows(2, ROWS, DIM * 2)}
    verdicts = judge(answers, 0.99)
    assert verdicts["http://c"].agrees is False
    assert "dimension 16" in verdicts["http://c"].detail
    assert "majority of 2" in verdicts["http://c"].detail
    ref = judge({"http://c": _unit_rows(2, ROWS, DIM * 2)}, 0.99, base)
    assert ref["http://c"].agrees is False
    assert "reference" in ref["http://c"].detail


def test_a_zero_answer_agrees_with_nothing() -> None:
    """All-zero rows (a broken kernel) have no direction: never agree, not even with each
    other. If this fails, two dead GPUs outvote a working one."""
    zero = np.zeros((ROWS, DIM))
    good = _unit_rows(3)
    verdicts = judge({"http://z1": zero, "http://z2": zero, "http://g": good}, 0.99)
    assert all(v.agrees is None for v in verdicts.values())
    verdicts = judge({"http://z1": zero, "http://g1": good, "http://g2": good}, 0.99)
    assert verdicts["http://z1"].agrees is False


def test_canary_policy_defaults_and_shorthands() -> None:
    """``canary=True`` means the default canary, ``False``/``None`` none; the defaults are
    documented values. If this fails, the documented switch does something else."""
    assert eb.HealthCheck(canary=True).canary == eb.Canary()
    assert eb.HealthCheck(canary=False).canary is None
    assert eb.HealthCheck().canary is None
    c = eb.Canary()
    assert c.threshold == 0.99
    assert c.interval == 10.0
    assert c.api == "tei"
    assert c.reference is None
    assert len(c.texts) >= 3
    hash(eb.HealthCheck(canary=eb.Canary(reference=_unit_rows(1, len(c.texts)))))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"texts": []},
        {"texts": "one string"},
        {"texts": ["ok", ""]},
        {"threshold": 0},
        {"threshold": 1.5},
        {"threshold": math.nan},
        {"interval": 0},
        {"timeout": -1},
        {"api": "grpc"},
        {"path": "embed"},
        {"texts": ["a", "b"], "reference": [[1.0, 0.0]]},
        {"texts": ["a"], "reference": [[math.nan, 1.0]]},
        {"texts": ["a"], "reference": [[0.0, 0.0]]},
        {"texts": ["a"], "reference": {"a": [1.0]}},
    ],
)
def test_bad_canary_settings_are_refused(kwargs: dict[str, object]) -> None:
    """Nonsense settings raise ValueError naming the setting. If this fails, a typo
    gives a canary that ejects everything or nothing."""
    with pytest.raises(ValueError, match=r"must|reference"):
        eb.Canary(**kwargs)  # type: ignore[arg-type]


def test_health_check_refuses_a_canary_of_another_type() -> None:
    """``canary="yes"`` is refused rather than read as on. If this fails, a config typo
    switches the check silently."""
    with pytest.raises(ValueError, match="canary"):
        eb.HealthCheck(canary="yes")


def test_from_reference_takes_texts_and_rows_from_one_mapping() -> None:
    """``Canary.from_reference`` keeps the mapping's order for texts and rows. If this
    fails, rows are compared with the reference of another text."""
    c = eb.Canary.from_reference({"a": [1.0, 0.0], "b": [0.0, 2.0]}, threshold=0.9)
    assert c.texts == ("a", "b")
    assert c.reference_matrix is not None
    assert c.reference_matrix.tolist() == [[1.0, 0.0], [0.0, 2.0]]
    assert c.threshold == 0.9

"""Exact cuts of the sub-batch planner and the token counters' edges (pure, no I/O)."""

from __future__ import annotations

import pytest

from embedbalance._batching import estimate_tokens, plan, token_counter


def _sizes(slices: list[slice]) -> list[int]:
    return [s.stop - s.start for s in slices]


def test_one_part_by_default() -> None:
    """Without min_parts, texts that fit every limit travel as one sub-batch."""
    assert plan([1, 1, 1], max_tokens=100, max_texts=100) == [slice(0, 3)]


def test_equal_cuts_by_cumulative_weight() -> None:
    """Asked for 2 or 3 parts of equal texts, the planner cuts them into equal slices."""
    assert _sizes(plan([1] * 4, max_tokens=100, max_texts=100, min_parts=2)) == [2, 2]
    assert _sizes(plan([1] * 6, max_tokens=100, max_texts=100, min_parts=3)) == [2, 2, 2]


def test_token_limit_sets_the_number_of_equal_parts() -> None:
    """300 tokens under a 120-token limit become three equal 100-token slices, not 120 + 120 + 60."""
    assert _sizes(plan([10] * 30, max_tokens=120, max_texts=1000)) == [10, 10, 10]


def test_a_slice_may_reach_the_token_limit_exactly() -> None:
    """A slice whose tokens equal max_tokens is within the limit and is not split."""
    assert plan([50, 50], max_tokens=100, max_texts=10) == [slice(0, 2)]


def test_limits_are_counted_afresh_after_a_split() -> None:
    """After a limit forces a split, the next slice's weight starts from zero (one phantom token would split it again)."""
    slices = plan([1, 3, 2, 11, 8, 10], max_tokens=13, max_texts=2, min_parts=3)
    assert slices == [slice(0, 2), slice(2, 4), slice(4, 5), slice(5, 6)]


def test_zero_limits_are_refused_with_the_documented_message() -> None:
    """A zero limit is a ValueError with the documented wording."""
    for limits in ({"max_tokens": 0, "max_texts": 1}, {"max_tokens": 1, "max_texts": 0}):
        with pytest.raises(ValueError, match=r"^max_tokens and max_texts must be >= 1$"):
            plan([1], **limits)


def test_encoder_counts_its_tokens_and_at_least_one() -> None:
    """An encoder's token count is used as is (one token is one), and an empty encoding counts as one."""

    class Enc:
        def __init__(self, ids: list[int]) -> None:
            self.ids = ids

        def encode(self, text: str) -> list[int]:
            return self.ids

    assert token_counter(Enc([7]))("x") == 1
    assert token_counter(Enc([]))("x") == 1


def test_counting_function_sees_the_text_and_counts_at_least_one() -> None:
    """A counting function is called with the text; its 1 stays 1 and its 0 becomes 1."""
    words = token_counter(lambda text: len(text.split()))
    assert words("a b c") == 3
    assert words("one") == 1
    assert words("") == 1


def test_bad_tokenizers_name_the_wrong_type() -> None:
    """Errors about a bad tokenizer or a non-int count name the type that was given."""
    with pytest.raises(TypeError, match=r"^tokenizer must return an int, got str$"):
        token_counter(lambda t: "many")("x")  # type: ignore[arg-type,return-value]
    with pytest.raises(
        TypeError,
        match=r"^tokenizer must have an encode\(text\) method or be a callable returning a "
        r"token count, got int$",
    ):
        token_counter(3)  # type: ignore[arg-type]


def test_estimate_counts_special_tokens() -> None:
    """The character estimate is ceil(chars / 4) plus two special tokens, so even an empty text costs 2."""
    assert estimate_tokens("") == 2
    assert estimate_tokens("abcd") == 3
    assert estimate_tokens("abcde") == 4

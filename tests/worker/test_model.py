"""The worker's rows equal a direct transformers forward, however they were batched."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModel, AutoTokenizer

from embedbalance_worker import DtypeRejected, EmbeddingModel, WorkerConfig
from embedbalance_worker.config import default_model_path
from embedbalance_worker.model import CANARY_TEXTS, InputTooLong, cosine_rows

TEXTS = [
    "short",
    "a medium sized sentence about load balancing embedding servers",
    "Ein Satz auf Deutsch.",
    "numbers 1 2 3 4 5 6 7 8 9 10 and more numbers 11 12 13",
    "long " * 100,
]


def _direct(texts: list[str]) -> np.ndarray:
    """Reference: tokenizer + AutoModel + mean pooling + L2, one text per forward."""
    path = str(default_model_path())
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    enc = AutoModel.from_pretrained(path, local_files_only=True).eval()
    out = []
    with torch.inference_mode():
        for text in texts:
            batch = tok([text], return_tensors="pt", truncation=True, max_length=256)
            hidden = enc(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            vec = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(vec, dim=-1)[0].numpy())
    return np.stack(out)


def test_rows_match_a_direct_forward_in_any_batch_grouping(model: EmbeddingModel) -> None:
    """Padding and grouping never change a row: cosine >= 0.9999 to one-at-a-time forwards."""
    expected = _direct(TEXTS)
    together = model.encode(TEXTS)
    assert cosine_rows(together, expected).min() >= 0.9999
    for i, text in enumerate(TEXTS):
        alone = model.encode([text])
        assert cosine_rows(alone, expected[i : i + 1])[0] >= 0.9999


def test_rows_match_sentence_transformers(model: EmbeddingModel) -> None:
    """The default model gives what sentence-transformers' encode gives for the same texts."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(default_model_path()), device="cpu")
    expected = st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    assert cosine_rows(model.encode(TEXTS), expected).min() >= 0.9999


def test_bfloat16_passes_its_canary_and_stays_close_to_float32(model: EmbeddingModel) -> None:
    """bfloat16 is accepted (canary cosine >= 0.999) and its rows stay close to float32."""
    bf16 = EmbeddingModel(WorkerConfig(dtype="bfloat16"))
    assert bf16.dtype_name == "bfloat16"
    assert bf16.canary_cosine >= 0.999
    assert cosine_rows(bf16.encode(TEXTS), model.encode(TEXTS)).min() >= 0.999


def test_a_dtype_below_the_canary_threshold_is_refused() -> None:
    """Start-up refuses a reduced dtype whose canary cosine misses the required bound."""
    with pytest.raises(DtypeRejected, match="bfloat16"):
        EmbeddingModel(WorkerConfig(dtype="bfloat16", canary_min_cosine=0.9999999))


def test_cls_pooling_takes_the_first_token(model: EmbeddingModel) -> None:
    """pooling=cls returns the [CLS] hidden state, which differs from the mean."""
    cls = EmbeddingModel(WorkerConfig(pooling="cls"))
    assert cosine_rows(cls.encode(TEXTS[:2]), model.encode(TEXTS[:2])).max() < 0.999


def test_truncate_keeps_the_closing_separator(model: EmbeddingModel) -> None:
    """Cutting token ids matches the tokenizer's own: max_input_length ids ending in [SEP]."""
    ids = model.tokenizer(["word " * 1000], truncation=False)["input_ids"][0]
    cut = model.truncate(list(ids))
    assert len(cut) == model.max_input_length
    assert cut[-1] == model.sep_id
    assert cut[:-1] == ids[: model.max_input_length - 1]


WORDS = st.sampled_from(
    ["the", "embedding", "Zürich", "naïve", "数字", "x" * 120, "!?", "don't", "3.14", "\n", "\t"]
)


@settings(max_examples=40, deadline=None)
@given(words=st.lists(WORDS, min_size=1, max_size=1200), sep=st.sampled_from([" ", "  ", "\n"]))
def test_tokenize_equals_the_tokenizers_own_truncation(
    model: EmbeddingModel, words: list[str], sep: str
) -> None:
    """Tokenizing a prefix gives exactly the ids the full tokenizer gives with truncation,
    for short and over-long texts alike."""
    text = sep.join(words)
    expected = model.tokenizer([text], truncation=True, max_length=model.max_input_length)[
        "input_ids"
    ][0]
    assert model.tokenize([text], truncate=True)[0] == list(expected)
    full = len(model.tokenizer([text], truncation=False)["input_ids"][0])
    if full > model.max_input_length:
        with pytest.raises(InputTooLong):
            model.tokenize([text], truncate=False)
    else:
        assert model.tokenize([text], truncate=False)[0] == list(expected)


class _Spy:
    """Wraps a tokenizer and records how many characters it was asked to encode."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.longest = 0

    def encode_batch(self, texts: list[str]) -> Any:
        self.longest = max([self.longest, *(len(t) for t in texts)])
        return self.inner.encode_batch(texts)

    def encode(self, text: str) -> Any:
        self.longest = max(self.longest, len(text))
        return self.inner.encode(text)


def test_an_over_long_text_is_judged_on_a_bounded_prefix(model: EmbeddingModel) -> None:
    """Refusing or truncating a 4 MB text tokenizes only a prefix of a few thousand
    characters, never the whole text."""
    text = "lorem ipsum dolor " * 230_000
    spy = _Spy(model._detect)
    model._detect, original = spy, model._detect  # type: ignore[method-assign]
    try:
        with pytest.raises(InputTooLong) as refused:
            model.tokenize(["fine", text], truncate=False)
        assert refused.value.index == 1
        assert len(model.tokenize([text], truncate=True)[0]) == model.max_input_length
    finally:
        model._detect = original
    assert 0 < spy.longest <= 16 * model.max_input_length


def test_a_long_run_without_spaces_is_read_whole_and_judged_exactly(model: EmbeddingModel) -> None:
    """A text that is one huge word (a single [UNK]) is not refused for its length in
    characters: the prefix grows until the decision is exact."""
    text = "ab" * 50_000
    expected = model.tokenizer([text], truncation=False)["input_ids"][0]
    assert model.tokenize([text], truncate=False)[0] == list(expected)


def test_canary_covers_several_lengths() -> None:
    """The canary includes short and long texts so a dtype is tested at long positions too."""
    lengths = sorted(len(t) for t in CANARY_TEXTS)
    assert lengths[0] < 10
    assert lengths[-1] > 1000

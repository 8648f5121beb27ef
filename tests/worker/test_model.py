"""The worker's rows equal a direct transformers forward, however they were batched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from embedbalance_worker import DtypeRejected, EmbeddingModel, WorkerConfig
from embedbalance_worker.config import default_model_path
from embedbalance_worker.model import CANARY_TEXTS, cosine_rows

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
    """Truncation matches the tokenizer's own: max_input_length ids ending in [SEP]."""
    ids = model.tokenize(["word " * 1000])[0]
    cut = model.truncate(ids)
    assert len(cut) == model.max_input_length
    assert cut[-1] == model.sep_id
    assert cut[:-1] == ids[: model.max_input_length - 1]


def test_canary_covers_several_lengths() -> None:
    """The canary includes short and long texts so a dtype is tested at long positions too."""
    lengths = sorted(len(t) for t in CANARY_TEXTS)
    assert lengths[0] < 10
    assert lengths[-1] > 1000

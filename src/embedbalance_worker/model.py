"""Loading the model, one forward pass, pooling, and the start-up dtype canary.

Why the worker tokenizes and pads itself: the batcher needs each text's token count to
admit and group work, so we tokenize once per request and build the padded tensors from
those ids; no text is tokenized twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from embedbalance_worker.config import WorkerConfig

log = logging.getLogger("embedbalance_worker")

FloatArray = npt.NDArray[np.float32]

# Texts of different lengths and scripts: a reduced dtype that drifts shows it here.
CANARY_TEXTS: tuple[str, ...] = (
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "Embedding models map text to vectors so that similar meanings land close together.",
    "Ein kurzer deutscher Satz über Wetter und Züge.",
    "数字 123456 and symbols !?#@ mixed with words " * 8,
    "A much longer passage repeats itself to exercise long positions. " * 20,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DtypeRejected(RuntimeError):
    """The requested dtype disagrees with float32 on the canary by more than allowed."""


def resolve_device(device: str) -> torch.device:
    """``auto`` means CUDA when torch sees one, else CPU; an explicit choice is honoured."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but torch sees no CUDA device")
    return torch.device(device)


def _max_input_length(path: Path, tokenizer: Any, model_config: Any) -> int:
    """The longest input the model was trained for, from every place that may state it.

    sentence-transformers folders cap it lower than the position table (all-MiniLM-L6-v2:
    256 of 512), and their ``encode`` truncates there, so we do too.
    """
    limits = [int(getattr(model_config, "max_position_embeddings", 512))]
    tok_max = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        seq = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(seq, int) and seq > 0:
            limits.append(seq)
    return min(limits)


def cosine_rows(a: FloatArray, b: FloatArray) -> npt.NDArray[np.float64]:
    """Row-wise cosine similarity of two equally shaped matrices."""
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return num / np.maximum(den, 1e-30)  # type: ignore[no-any-return]


def l2_normalize(rows: FloatArray) -> FloatArray:
    """Unit-length rows; an all-zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    out: FloatArray = (rows / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return out


class EmbeddingModel:
    """A tokenizer and an encoder on one device, used by one thread at a time.

    The batcher owns the only thread that calls :meth:`forward`, so no lock is needed.
    """

    def __init__(self, config: WorkerConfig) -> None:
        from transformers import AutoModel, AutoTokenizer

        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        self.path = config.resolved_model_path()
        self.model_id = config.resolved_model_id()
        self.pooling = config.pooling
        self.device = resolve_device(config.device)
        self.delay_s = config.delay_ms / 1000.0
        started = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True)
        self.model.eval().to(self.device)
        self.max_input_length = _max_input_length(self.path, self.tokenizer, self.model.config)
        # We enforce the limit ourselves (413 or truncation), so the tokenizer's own
        # "sequence is longer than" warning would only be noise.
        self.tokenizer.model_max_length = 1 << 30
        self.dimension = int(self.model.config.hidden_size)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        sep = self.tokenizer.sep_token_id
        self.sep_id: int | None = int(sep) if sep is not None else None
        self.dtype_name = "float32"
        self.canary_cosine = 1.0
        reference = self.encode(CANARY_TEXTS)
        if config.dtype != "float32":
            self.model.to(_DTYPES[config.dtype])
            self.dtype_name = config.dtype
            reduced = self.encode(CANARY_TEXTS)
            self.canary_cosine = float(cosine_rows(reference, reduced).min())
            if self.canary_cosine < config.canary_min_cosine:
                raise DtypeRejected(
                    f"dtype {config.dtype} reaches cosine {self.canary_cosine:.6f} to float32 "
                    f"on the canary, below the required {config.canary_min_cosine}"
                )
        self._warm_up()
        log.info(
            "model %s loaded on %s as %s in %.1fs (canary cosine %.6f)",
            self.model_id,
            self.device,
            self.dtype_name,
            time.perf_counter() - started,
            self.canary_cosine,
        )

    def _warm_up(self) -> None:
        """Run a few shapes once so the first real request does not pay for lazy init."""
        for n, length in ((1, 8), (8, 32), (32, 16)):
            self.forward([[self.pad_id + 1] * length] * n)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with special tokens and no truncation: callers decide what too long means."""
        encoded = self.tokenizer(
            list(texts),
            add_special_tokens=True,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [list(ids) for ids in encoded["input_ids"]]

    def truncate(self, ids: list[int]) -> list[int]:
        """Cut to the model's limit the way the tokenizer would: keep the closing [SEP]."""
        limit = self.max_input_length
        if len(ids) <= limit:
            return ids
        if self.sep_id is not None and ids[-1] == self.sep_id:
            return [*ids[: limit - 1], self.sep_id]
        return ids[:limit]

    def forward(self, batch: Sequence[Sequence[int]]) -> FloatArray:
        """Pooled, un-normalised float32 rows for already tokenized texts, in input order."""
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        input_ids = input_ids.to(self.device)
        mask = mask.to(self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            hidden = hidden.float()
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        out: FloatArray = pooled.cpu().numpy().astype(np.float32, copy=False)
        return out

    def encode(self, texts: Sequence[str], normalize: bool = True) -> FloatArray:
        """Tokenize, truncate, forward and optionally normalise: the one-call path."""
        ids = [self.truncate(t) for t in self.tokenize(texts)]
        rows = self.forward(ids)
        return l2_normalize(rows) if normalize else rows

"""Loading the model, tokenizing within limits, one forward pass, and the dtype canary.

Why the worker tokenizes and pads itself: the batcher needs each text's token count to
admit and group work, so we tokenize once per request and build the padded tensors from
those ids; no text is tokenized twice.

Why tokenization looks at a prefix first: an over-long text only needs enough of it
tokenized to prove it is over the limit (413) or to know its first ``limit`` tokens
(truncation). Tokenizing a 4 MiB text to refuse it is the work a flood of garbage would
make us do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from embedbalance_worker.config import WorkerConfig
from embedbalance_worker.stconfig import DenseSpec, Pipeline, UnsupportedModel, read_pipeline

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
#: Characters per allowed token in the first prefix we tokenize; a prefix that turns out
#: too short for a decision is grown fourfold until the whole text is in.
_PREFIX_CHARS_PER_TOKEN = 12
_WHITESPACE = (" ", "\n", "\t", "\r")


class DtypeRejected(RuntimeError):
    """The requested dtype disagrees with float32 on the canary by more than allowed."""


class InputTooLong(ValueError):
    """Input ``index`` has more than ``limit`` tokens (``tokens`` is a lower bound)."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(f"input {index} has more than {limit} tokens")
        self.index = index
        self.tokens = tokens
        self.limit = limit


class TokenizationFailed(ValueError):
    """The tokenizer refused input ``index`` (a character it cannot encode, say)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"input {index} could not be tokenized: {reason}")
        self.index = index


def resolve_device(device: str) -> torch.device:
    """``auto`` means CUDA when torch sees one, else CPU; an explicit choice is honoured."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but torch sees no CUDA device")
    return torch.device(device)


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


def _cut(text: str, chars: int) -> str:
    """The text's first ``chars`` characters, ending at a whitespace when one is near."""
    if len(text) <= chars:
        return text
    head = text[:chars]
    cut = max(head.rfind(w, chars // 2) for w in _WHITESPACE)
    return head[:cut] if cut > 0 else head


def _load_dense(spec: DenseSpec) -> torch.nn.Module:
    linear = torch.nn.Linear(spec.in_features, spec.out_features, bias=spec.bias)
    weights_file = spec.path / "model.safetensors"
    if weights_file.is_file():
        from safetensors.torch import load_file

        state = load_file(str(weights_file))
    else:
        state = torch.load(spec.path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    state = {k.removeprefix("linear."): v for k, v in state.items()}
    linear.load_state_dict(state)
    activation = getattr(torch.nn, spec.activation)()
    return torch.nn.Sequential(linear, activation)


def _pool(
    mode: str, hidden: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """One sentence-transformers pooling mode over right-padded hidden states."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "lasttoken":
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, lengths - 1]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    summed = (hidden * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp(min=1e-9)
    if mode == "mean_sqrt_len_tokens":
        return summed / torch.sqrt(count)
    return summed / count


class EmbeddingModel:
    """A tokenizer, an encoder and the sentence-transformers head, on one device.

    The batcher owns the only thread that calls :meth:`forward`, so no lock is needed;
    :meth:`tokenize` is safe from any thread.
    """

    def __init__(self, config: WorkerConfig) -> None:
        from tokenizers import Tokenizer
        from transformers import AutoModel, AutoTokenizer

        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        self.path = config.resolved_model_path()
        self.model_id = config.resolved_model_id()
        if not self.path.is_dir():
            raise UnsupportedModel(f"model folder {self.path} does not exist")
        self.pipeline: Pipeline = read_pipeline(self.path, config.pooling)
        self.pooling = self.pipeline.pooling_name
        self.device = resolve_device(config.device)
        started = time.perf_counter()
        source = self.pipeline.transformer_path
        tok_source = source if (source / "tokenizer.json").is_file() else self.path
        tokenizer = AutoTokenizer.from_pretrained(str(tok_source), local_files_only=True)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise UnsupportedModel(f"{tok_source} has no fast (tokenizers) tokenizer")
        self.tokenizer = tokenizer
        self.model = AutoModel.from_pretrained(str(source), local_files_only=True)
        self.model.eval().to(self.device)
        self.max_input_length = self._max_input_length(tokenizer, self.model.config)
        # Two private copies of the fast tokenizer: one truncating one past the limit
        # (to detect over-long input), one at the limit (to truncate as the model's own
        # tokenizer would, special tokens included).
        spec = backend.to_str()
        self._detect: Any = Tokenizer.from_str(spec)
        self._detect.no_padding()
        self._detect.enable_truncation(max_length=self.max_input_length + 1)
        self._cutter: Any = Tokenizer.from_str(spec)
        self._cutter.no_padding()
        self._cutter.enable_truncation(max_length=self.max_input_length)
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        self.hidden_size = int(self.model.config.hidden_size)
        self.dense = [_load_dense(d).eval().to(self.device) for d in self.pipeline.dense]
        if self.dense and self.pipeline.dense[0].in_features != self.hidden_size * len(
            self.pipeline.pooling
        ):
            raise UnsupportedModel(
                f"{self.pipeline.dense[0].path}: in_features {self.pipeline.dense[0].in_features}"
                f" does not match the pooled width {self.hidden_size * len(self.pipeline.pooling)}"
            )
        self.dimension = self.pipeline.dimension(self.hidden_size)
        self.normalizes = self.pipeline.normalize
        self.pad_id = int(tokenizer.pad_token_id or 0)
        sep = tokenizer.sep_token_id
        self.sep_id: int | None = int(sep) if sep is not None else None
        self.dtype_name = "float32"
        self.canary_cosine = 1.0
        self._calibrated: int | None = None
        if config.dtype != "float32":
            reference = self.encode(CANARY_TEXTS)
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
            "model %s loaded on %s as %s in %.1fs (pooling %s, dimension %d, canary cosine %.6f)",
            self.model_id,
            self.device,
            self.dtype_name,
            time.perf_counter() - started,
            self.pooling,
            self.dimension,
            self.canary_cosine,
        )

    def _max_input_length(self, tokenizer: Any, model_config: Any) -> int:
        """The longest input the model was trained for, from every place that may state it.

        sentence-transformers folders cap it lower than the position table
        (all-MiniLM-L6-v2: 256 of 512), and their ``encode`` truncates there, so we do too.
        """
        limits = [int(getattr(model_config, "max_position_embeddings", 512))]
        tok_max = int(getattr(tokenizer, "model_max_length", 0) or 0)
        if 0 < tok_max < 1_000_000:
            limits.append(tok_max)
        if self.pipeline.max_seq_length is not None:
            limits.append(self.pipeline.max_seq_length)
        return min(limits)

    def _warm_up(self) -> None:
        """Run a few shapes once so the first real request does not pay for lazy init."""
        for n, length in ((1, 8), (8, 32), (32, 16)):
            self.forward([[self.pad_id + 1] * length] * n)

    # -- tokenization ------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], *, truncate: bool = True) -> list[list[int]]:
        """Token ids with special tokens, never longer than :attr:`max_input_length`.

        An over-long text is cut to the limit (``truncate``) or raises
        :class:`InputTooLong` naming the first such input; only a bounded prefix of a
        long text is ever tokenized. The tokenizer's own errors become
        :class:`TokenizationFailed`.
        """
        if self.pipeline.do_lower_case:
            texts = [t.lower() for t in texts]
        limit = self.max_input_length
        chars = (limit + 1) * _PREFIX_CHARS_PER_TOKEN
        heads = [_cut(t, chars) for t in texts]
        try:
            encodings = self._detect.encode_batch(heads)
        except Exception:  # find which input the tokenizer refused
            for i, head in enumerate(heads):
                try:
                    self._detect.encode(head)
                except Exception as exc:
                    raise TokenizationFailed(i, str(exc) or type(exc).__name__) from None
            raise
        out: list[list[int]] = []
        for i, (text, head, enc) in enumerate(zip(texts, heads, encodings, strict=True)):
            ids: list[int] = enc.ids
            size = chars
            # A cut text that is not yet over the limit may be within it: look further.
            while len(ids) <= limit and len(head) < len(text):
                size *= 4
                head = _cut(text, size)
                ids = self._detect.encode(head).ids
            if len(ids) > limit:
                if not truncate:
                    raise InputTooLong(i, len(ids), limit)
                ids = self._cutter.encode(head).ids
            out.append(ids)
        return out

    def truncate(self, ids: list[int]) -> list[int]:
        """Cut ids to the model's limit the way the tokenizer would: keep the closing [SEP]."""
        limit = self.max_input_length
        if len(ids) <= limit:
            return ids
        if self.sep_id is not None and ids[-1] == self.sep_id:
            return [*ids[: limit - 1], self.sep_id]
        return ids[:limit]

    # -- forward -----------------------------------------------------------------------
    def forward(self, batch: Sequence[Sequence[int]]) -> FloatArray:
        """Rows as sentence-transformers' pipeline makes them up to its Normalize step
        (pooling, dense layers), float32, in input order.

        Normalising is the request's choice (``normalize``, true by default), as in TEI;
        a folder's Normalize module is reported by ``/info`` as ``model_normalizes``.
        """
        lengths_np = np.fromiter((len(ids) for ids in batch), dtype=np.int64, count=len(batch))
        width = int(lengths_np.max())
        grid = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        for row, ids in enumerate(batch):
            grid[row, : len(ids)] = ids
        lengths = torch.from_numpy(lengths_np)
        mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.long)
        input_ids = torch.from_numpy(grid).to(self.device)
        mask = mask.to(self.device)
        lengths = lengths.to(self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            hidden = hidden.float()
            parts = [_pool(mode, hidden, mask, lengths) for mode in self.pipeline.pooling]
            pooled = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
            for layer in self.dense:
                pooled = layer(pooled)
        out: FloatArray = pooled.cpu().numpy().astype(np.float32, copy=False)
        return out

    def encode(self, texts: Sequence[str], normalize: bool = True) -> FloatArray:
        """Tokenize, truncate, forward and optionally normalise: the one-call path."""
        rows = self.forward(self.tokenize(texts))
        return l2_normalize(rows) if normalize else rows

    # -- sizing ------------------------------------------------------------------------
    def calibrate_batch_tokens(
        self, candidates: Sequence[int] = (256, 512, 1024, 2048, 4096), floor: int = 512
    ) -> int:
        """The smallest padded-token budget per pass within 10% of the best throughput seen.

        Why: on a CPU, throughput stops growing after a few rows and big passes only add
        latency (and queueing for whoever arrives during one); on a GPU it keeps growing,
        so a GPU gets TEI's default of 16384 without measuring. Measuring stops at the
        first budget that gains less than 10% over the best so far, so start-up pays a
        few passes of about the chosen size. The answer is never below ``floor``: under
        that, the worker's own per-pass costs (thread hand-off, padding, answering) weigh
        more than the raw forward this measures, and a busy machine's noise can make a
        tiny budget look best.
        """
        if self._calibrated is not None:
            return self._calibrated
        if self.device.type != "cpu":
            return 16384
        width = 32
        rates: dict[int, float] = {}
        for budget in candidates:
            rows = [[self.pad_id + 1] * width] * max(1, budget // width)
            best = float("inf")
            for _ in range(2):
                started = time.perf_counter()
                self.forward(rows)
                best = min(best, time.perf_counter() - started)
            rate = len(rows) * width / max(best, 1e-9)
            gained = not rates or rate >= 1.1 * max(rates.values())
            rates[budget] = rate
            if not gained:  # throughput has levelled off: bigger passes only add latency
                break
        top = max(rates.values())
        chosen = max(floor, min(b for b, r in rates.items() if r >= 0.9 * top))
        self._calibrated = chosen
        log.info(
            "batch budget %d tokens (tokens/s by budget: %s)",
            chosen,
            ", ".join(f"{b}: {r:.0f}" for b, r in rates.items()),
        )
        return chosen

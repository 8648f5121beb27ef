"""What a sentence-transformers folder says to do after the transformer: pooling, dense
layers, normalisation, and the sequence limit.

Why read it ourselves instead of loading ``sentence_transformers``: the worker runs the
transformer with its own batching and padding, and only needs the few numbers and small
weight files that follow it. What we cannot run exactly, we refuse at start-up with the
module's name, because a model that embeds wrongly looks healthy to every probe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from embedbalance_worker.config import POOLINGS

#: Activations a Dense module may name (sentence-transformers saves the class path).
ACTIVATIONS: tuple[str, ...] = ("Identity", "Tanh", "ReLU", "GELU", "Sigmoid", "SiLU")

_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


class UnsupportedModel(ValueError):
    """The folder's sentence-transformers pipeline holds something the worker cannot run."""


@attrs.frozen
class DenseSpec:
    """One ``Dense`` module: a linear layer (weights in its folder) and an activation."""

    path: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str


@attrs.frozen
class Pipeline:
    """The steps after the transformer, in order: pooling, dense layers, normalise."""

    transformer_path: Path
    pooling: tuple[str, ...]
    dense: tuple[DenseSpec, ...] = ()
    normalize: bool = False
    max_seq_length: int | None = None
    do_lower_case: bool = False
    from_config: bool = True

    @property
    def pooling_name(self) -> str:
        """The pooling as one name (``+`` joins modes that are concatenated)."""
        return "+".join(self.pooling)

    def dimension(self, hidden_size: int) -> int:
        """The width of the vectors this pipeline produces."""
        if self.dense:
            return self.dense[-1].out_features
        return hidden_size * len(self.pooling)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedModel(f"cannot read {path}: {exc}") from None


def _pooling_modes(config: dict[str, Any], where: Path) -> tuple[str, ...]:
    mode = config.get("pooling_mode")
    if isinstance(mode, str):
        modes: tuple[str, ...] = (mode,)
    elif isinstance(mode, list):
        modes = tuple(str(m) for m in mode)
    else:
        modes = tuple(name for key, name in _LEGACY_POOLING_KEYS.items() if config.get(key))
    if not modes:
        raise UnsupportedModel(f"{where} enables no pooling mode")
    for m in modes:
        if m not in POOLINGS:
            raise UnsupportedModel(
                f"{where}: pooling mode {m!r} is not supported (supported: {', '.join(POOLINGS)})"
            )
    return modes


def _dense(folder: Path) -> DenseSpec:
    config = _read_json(folder / "config.json")
    activation = str(config.get("activation_function", "torch.nn.modules.activation.Tanh"))
    short = activation.rsplit(".", 1)[-1]
    if short not in ACTIVATIONS:
        raise UnsupportedModel(f"{folder}: Dense activation {activation!r} is not supported")
    if config.get("use_residual"):
        raise UnsupportedModel(f"{folder}: Dense with use_residual is not supported")
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, "sentence_embedding") not in (None, "sentence_embedding"):
            raise UnsupportedModel(f"{folder}: Dense {key} {config[key]!r} is not supported")
    if not ((folder / "model.safetensors").is_file() or (folder / "pytorch_model.bin").is_file()):
        raise UnsupportedModel(f"{folder}: Dense has no model.safetensors or pytorch_model.bin")
    return DenseSpec(
        path=folder,
        in_features=int(config["in_features"]),
        out_features=int(config["out_features"]),
        bias=bool(config.get("bias", True)),
        activation=short,
    )


def read_pipeline(folder: Path, pooling_override: str | None = None) -> Pipeline:
    """The pipeline a sentence-transformers folder describes, or :class:`UnsupportedModel`.

    A folder without ``modules.json`` is a plain transformers save: it needs
    ``pooling_override`` (TEI refuses such a folder without ``--pooling`` too), and then
    gets that pooling and no normalisation step. ``pooling_override`` also replaces the
    configured pooling of a sentence-transformers folder.
    """
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        if pooling_override is None:
            raise UnsupportedModel(
                f"{folder} has no modules.json (not a sentence-transformers folder): "
                "say how to pool with --pooling"
            )
        return Pipeline(transformer_path=folder, pooling=(pooling_override,), from_config=False)
    modules = _read_json(modules_file)
    if not isinstance(modules, list) or not modules:
        raise UnsupportedModel(f"{modules_file} is not a list of modules")
    transformer: Path | None = None
    pooling: tuple[str, ...] | None = None
    dense: list[DenseSpec] = []
    normalize = False
    for module in sorted(modules, key=lambda m: int(m.get("idx", 0))):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        sub = folder / str(module.get("path", ""))
        if kind == "Transformer" and transformer is None:
            transformer = sub
        elif kind == "Pooling" and transformer is not None and pooling is None and not dense:
            pooling = _pooling_modes(_read_json(sub / "config.json"), sub)
        elif kind == "Dense" and pooling is not None and not normalize:
            dense.append(_dense(sub))
        elif kind == "Normalize" and pooling is not None:
            normalize = True
        else:
            raise UnsupportedModel(
                f"{modules_file}: module {module.get('type')!r} at position {module.get('idx')} "
                "is not supported (the worker runs Transformer, Pooling, Dense..., Normalize)"
            )
    if transformer is None:
        raise UnsupportedModel(f"{modules_file} names no Transformer module")
    if pooling is None:
        if pooling_override is None:
            raise UnsupportedModel(f"{modules_file} names no Pooling module: use --pooling")
        pooling = (pooling_override,)
    if pooling_override is not None:
        pooling = (pooling_override,)
    max_seq_length: int | None = None
    lower = False
    candidates = (transformer, folder)
    for st_config in (c / "sentence_bert_config.json" for c in candidates):
        if st_config.is_file():
            data = _read_json(st_config)
            seq = data.get("max_seq_length")
            if isinstance(seq, int) and seq > 0:
                max_seq_length = seq
            lower = bool(data.get("do_lower_case", False))
            break
    return Pipeline(
        transformer_path=transformer,
        pooling=pooling,
        dense=tuple(dense),
        normalize=normalize,
        max_seq_length=max_seq_length,
        do_lower_case=lower,
    )

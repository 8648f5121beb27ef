"""Models other than the bundled one: pooling, dense layers and normalisation come from the
sentence-transformers config, or start-up refuses the folder by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

from embedbalance_worker import EmbeddingModel, UnsupportedModel, WorkerConfig, create_app
from embedbalance_worker.config import default_model_path
from embedbalance_worker.model import cosine_rows

TEXTS = [
    "short",
    "a medium sized sentence about load balancing embedding servers",
    "Ein Satz auf Deutsch.",
    "long " * 300,
]


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(default_model_path(), folder)
    return folder


def _set_pooling(folder: Path, mode: str) -> None:
    config_file = folder / "1_Pooling" / "config.json"
    config = json.loads(config_file.read_text())
    for key in list(config):
        if key.startswith("pooling_mode_"):
            config[key] = False
    config[f"pooling_mode_{mode}"] = True
    config_file.write_text(json.dumps(config))


def _st_rows(folder: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu")
    return st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def test_cls_pooling_from_the_config_matches_sentence_transformers(
    tmp_path: Path, model: EmbeddingModel
) -> None:
    """A folder whose pooling config says CLS is pooled on [CLS], exactly as
    sentence-transformers' encode does, and not mean-pooled."""
    folder = _copy(tmp_path)
    _set_pooling(folder, "cls_token")
    cls = EmbeddingModel(WorkerConfig(model_path=folder))
    assert cls.pooling == "cls"
    ours = cls.encode(TEXTS)
    assert cosine_rows(ours, _st_rows(folder, TEXTS)).min() >= 0.9999
    assert cosine_rows(ours, model.encode(TEXTS)).max() < 0.999, "still mean-pooled"
    with TestClient(create_app(WorkerConfig(model_path=folder), model=cls)) as client:
        info = client.get("/info").json()
    assert info["pooling"] == "cls"
    assert info["model_type"] == {"embedding": {"pooling": "cls"}}
    assert info["dimension"] == 384


def test_dense_layer_and_normalize_match_sentence_transformers(tmp_path: Path) -> None:
    """A Dense module after pooling (384 -> 96, tanh) and a Normalize step are applied as
    sentence-transformers applies them, and the dimension is the dense layer's output."""
    from sentence_transformers.base.modules.dense import Dense

    folder = _copy(tmp_path)
    _set_pooling(folder, "max_tokens")
    torch.manual_seed(7)
    (folder / "2_Dense").mkdir()
    Dense(384, 96, activation_function=torch.nn.Tanh()).save(str(folder / "2_Dense"))
    modules = json.loads((folder / "modules.json").read_text())
    normalize = modules[-1]
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    normalize.update(idx=3, name="3")
    (folder / "modules.json").write_text(json.dumps([*modules[:2], dense, normalize]))
    ours = EmbeddingModel(WorkerConfig(model_path=folder))
    assert ours.dimension == 96
    assert ours.pooling == "max"
    assert ours.normalizes
    rows = ours.encode(TEXTS)
    assert rows.shape == (len(TEXTS), 96)
    assert cosine_rows(rows, _st_rows(folder, TEXTS)).min() >= 0.9999


def test_pooling_override_replaces_the_config(tmp_path: Path) -> None:
    """--pooling (TEI's override) wins over the folder's pooling config."""
    folder = _copy(tmp_path)
    _set_pooling(folder, "cls_token")
    mean = EmbeddingModel(WorkerConfig(model_path=folder, pooling="mean"))
    assert mean.pooling == "mean"
    _set_pooling(folder, "mean_tokens")
    assert cosine_rows(mean.encode(TEXTS), _st_rows(folder, TEXTS)).min() >= 0.9999


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("unsupported module", "LSTM"),
        ("weightedmean pooling", "weightedmean"),
        ("no modules.json", "--pooling"),
        ("odd activation", "activation"),
    ],
)
def test_what_cannot_be_run_is_refused_at_start_up(
    tmp_path: Path, change: str, message: str
) -> None:
    """A pipeline step the worker cannot run exactly stops start-up with an error naming it."""
    folder = _copy(tmp_path)
    modules_file = folder / "modules.json"
    modules = json.loads(modules_file.read_text())
    if change == "unsupported module":
        modules.insert(
            1, {"idx": 1, "name": "x", "path": "x", "type": "sentence_transformers.models.LSTM"}
        )
        for i, m in enumerate(modules):
            m["idx"] = i
        modules_file.write_text(json.dumps(modules))
    elif change == "weightedmean pooling":
        _set_pooling(folder, "weightedmean_tokens")
    elif change == "no modules.json":
        modules_file.unlink()
    else:
        (folder / "2_Dense").mkdir()
        (folder / "2_Dense" / "config.json").write_text(
            json.dumps({"in_features": 384, "out_features": 8, "activation_function": "my.Act"})
        )
        dense = {
            "idx": 2,
            "name": "2",
            "path": "2_Dense",
            "type": "sentence_transformers.models.Dense",
        }
        modules_file.write_text(json.dumps([*modules[:2], dense]))
    with pytest.raises(UnsupportedModel, match=message):
        EmbeddingModel(WorkerConfig(model_path=folder))

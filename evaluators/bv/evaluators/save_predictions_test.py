import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import Mesh

from bv.core import registry
from bv.core.data import build_from_arrays
from bv.evaluators import EvaluatorConfigError, SavePredictionsEvaluator

MESH = Mesh(np.asarray(jax.devices()[:1]), ("data",))
PP = "decode(channels=1)|onehot(3, key='label', key_result='labels')|keep('image', 'labels')"
VALUES = np.asarray([3, 1, 4, 1, 5, 9, 2, 6, 5, 3], np.uint8)  # image i is the constant VALUES[i]


def _predict(params: dict, images: jax.Array) -> tuple[jax.Array, dict]:
    p = images[:, 0, 0, 0].astype(jnp.float32)
    logits = jnp.stack([p, -p, params["b"] - p], axis=-1)
    return logits, {"pre_logits": jnp.stack([p, 2 * p], axis=-1)}


def _expected_logits() -> np.ndarray:
    images = np.broadcast_to(VALUES[:, None, None, None], (10, 4, 4, 1))
    return np.asarray(_predict({"b": 4.0}, jnp.asarray(images))[0])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tfds")
    images = np.broadcast_to(VALUES[:, None, None, None], (10, 4, 4, 1)).copy()
    build_from_arrays("ten_values", {"test": {"image": images, "label": VALUES % 3}}, str(folder))
    return folder


def _evaluator(data_dir: Path, out: Path, **kw: Any) -> SavePredictionsEvaluator:
    config: dict[str, Any] = dict(
        data={"name": "ten_values", "split": "test"},
        pp_fn=PP,
        batch_size=4,  # 3 batches, the last with 2 padding examples
        mesh=MESH,
        data_dir=str(data_dir),
        workdir=str(out),
        name="preds",
    )
    return SavePredictionsEvaluator({"predict": _predict}, **{**config, **kw})


def test_npz_holds_every_example_once_and_loads_without_pickle(data_dir: Path, tmp_path: Path) -> None:
    evaluator = _evaluator(data_dir, tmp_path, outputs=("pre_logits",))
    assert evaluator.run({"b": jnp.float32(4.0)}) == {"num_examples": 10.0}
    assert sorted(os.listdir(tmp_path)) == ["predictions_preds.npz"]  # no temporary file left
    with np.load(tmp_path / "predictions_preds.npz", allow_pickle=False) as saved:
        assert sorted(saved.files) == ["id", "index", "labels", "logits", "pre_logits"]
        np.testing.assert_array_equal(saved["index"], np.arange(10))
        np.testing.assert_allclose(saved["logits"], _expected_logits())
        np.testing.assert_array_equal(saved["labels"], np.eye(3)[VALUES % 3])
        np.testing.assert_allclose(saved["pre_logits"][:, 1], 2.0 * VALUES)
        assert len(set(saved["id"].tolist())) == 10  # distinct TFDS example ids

    evaluator.run({"b": jnp.float32(4.0)}, step=7)
    assert (tmp_path / "predictions_preds_7.npz").exists()


def test_jsonl_with_top_k_in_an_explicit_out_dir(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    evaluator = _evaluator(data_dir, tmp_path, workdir=None, out_dir=str(out), top_k=2, format="jsonl")
    assert evaluator.run({"b": jnp.float32(4.0)}) == {"num_examples": 10.0}
    rows = [json.loads(line) for line in (out / "predictions_preds.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(10))
    logits = _expected_logits()
    best = np.argsort(-logits, axis=1, kind="stable")[:, :2]
    assert [r["top_k_classes"] for r in rows] == best.tolist()
    np.testing.assert_allclose([r["top_k_logits"] for r in rows], np.take_along_axis(logits, best, axis=1))


def test_string_keys_are_fixed_width_unicode(tmp_path: Path) -> None:
    pp = "decode|resize(4)|onehot(1000, key='label', key_result='labels')|keep('image', 'labels', 'file_name')"
    with tfds.testing.mock_data(num_examples=5):
        evaluator = SavePredictionsEvaluator(
            {"predict": _predict},
            data={"name": "imagenet_v2", "split": "test"},
            pp_fn=pp,
            batch_size=2,
            mesh=MESH,
            workdir=str(tmp_path),
            keys=("file_name",),
            top_k=1,
        )
        assert evaluator.run({"b": 0.0}) == {"num_examples": 5.0}
    with np.load(tmp_path / "predictions_save_predictions.npz", allow_pickle=False) as saved:
        assert saved["file_name"].dtype.kind == "U" and saved["file_name"].shape == (5,)
        assert saved["top_k_classes"].shape == (5, 1) and saved["labels"].shape == (5, 1000)


def test_config_errors_name_the_evaluator_and_the_fix(data_dir: Path, tmp_path: Path) -> None:
    assert registry.evaluators.get("save_predictions") is SavePredictionsEvaluator
    with pytest.raises(EvaluatorConfigError, match=r"'preds' \(save_predictions\).*no workdir.*out_dir"):
        _evaluator(data_dir, tmp_path, workdir=None)
    with pytest.raises(EvaluatorConfigError, match="format='csv'; expected one of npz, jsonl"):
        _evaluator(data_dir, tmp_path, format="csv")
    with pytest.raises(EvaluatorConfigError, match="top_k must be None"):
        _evaluator(data_dir, tmp_path, top_k=0)
    with pytest.raises(EvaluatorConfigError, match=r"without \['file_name'\]"):
        _evaluator(data_dir, tmp_path, keys=("file_name",))
    with pytest.raises(EvaluatorConfigError, match="does not output 'pre_logit'"):
        _evaluator(data_dir, tmp_path, outputs=("pre_logit",)).run({"b": 0.0})

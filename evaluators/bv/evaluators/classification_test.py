from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from bv.core import registry
from bv.core.data import build_from_arrays
from bv.evaluators import ClassificationEvaluator

PP = "decode(channels=1)|onehot(3, key='label', key_result='labels')|keep('image', 'labels')"


def _predict(params: dict, images: jax.Array) -> tuple[jax.Array, dict]:
    """Right for pixel values 0..6, wrong for 7..9: 7 of the 10 examples."""
    pixel = images[:, 0, 0, 0].astype(jnp.int32)
    guess = jnp.where(pixel < 7, pixel % 3, (pixel + 1) % 3)
    return params["scale"] * jax.nn.one_hot(guess, 3), {}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tfds")
    values = np.arange(10, dtype=np.uint8)
    images = np.broadcast_to(values[:, None, None, None], (10, 4, 4, 1)).copy()
    build_from_arrays("ten_constants", {"test": {"image": images, "label": values % 3}}, str(folder))
    return folder


@pytest.mark.parametrize("batch_size", [1, 4, 7, 10])
def test_each_example_counts_once_whatever_the_batch_size(data_dir: Path, batch_size: int) -> None:
    evaluator = ClassificationEvaluator(
        {"predict": _predict},
        data={"name": "ten_constants", "split": "test"},
        pp_fn=PP,
        batch_size=batch_size,
        mesh=Mesh(np.asarray(jax.devices()[:1]), ("data",)),
        data_dir=str(data_dir),
    )
    metrics = evaluator.run({"scale": jnp.float32(2.0)})
    assert metrics["prec@1"] == pytest.approx(0.7)
    # softmax_xent of logits 2*onehot: right -> log(e^2 + 2) - 2, wrong -> log(e^2 + 2).
    right, wrong = np.log(np.exp(2.0) + 2) - 2, np.log(np.exp(2.0) + 2)
    assert metrics["loss"] == pytest.approx((7 * right + 3 * wrong) / 10, rel=1e-5)


def test_the_evaluator_is_registered_and_needs_a_split() -> None:
    assert registry.evaluators.get("classification") is ClassificationEvaluator
    with pytest.raises(ValueError, match="needs 'name' and 'split'"):
        ClassificationEvaluator({"predict": _predict}, data={"name": "x"}, pp_fn=PP, batch_size=2, mesh=None)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="Unknown evaluator 'clasification'. Did you mean 'classification'"):
        registry.evaluators.get("clasification")

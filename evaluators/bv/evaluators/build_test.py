"""Bad evaluator configs fail when the evaluators are built, naming the entry and the fix."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from bv.core.data import build_from_arrays
from bv.evaluators import EvaluatorConfigError, build_evaluators

PP = "decode(channels=1)|onehot(3, key='label', key_result='labels')|keep('image', 'labels')"


def _predict(params: dict, images: jax.Array) -> tuple[jax.Array, dict]:
    flat = images.reshape(images.shape[0], -1).astype("float32")
    return flat[:, :3], {"pre_logits": flat}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tfds")
    images = np.arange(12, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
    build_from_arrays("twelve_images", {"test": {"image": images, "label": np.arange(12) % 3}}, str(folder))
    return folder


def _build(data_dir: Path, **entry: object) -> list:
    cfg = {"type": "classification", "data": {"name": "twelve_images", "split": "test"}, "pp_fn": PP, **entry}
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    return build_evaluators(
        {"test": cfg}, {"predict": _predict}, mesh, batch_size=4, data_dir=str(data_dir), workdir=None
    )


def test_a_good_entry_builds_and_runs(data_dir: Path) -> None:
    (built,) = _build(data_dir)
    assert built.name == "test" and set(built.evaluator.run({})) == {"prec@1", "loss"}


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            dict(type="clasification"),
            r"config.evals.test: Unknown evaluator 'clasification'. Did you mean 'classification'",
        ),
        (
            dict(data={"name": "twelve_images", "split": "validation"}),
            r"'test' .*has no split 'validation'.* Its splits: test",
        ),
        (dict(batch_size=16), r"'test' .*batch_size=16 is larger than the whole split .*12 examples.* at most 12"),
        (dict(pred="embed"), r"'test' .*pred='embed' is not a predict function of this task; it has: predict"),
        (dict(no_such_option=1), r"config.evals.test \(a 'classification' evaluator\): .*no_such_option"),
    ],
)
def test_bad_entries_are_clear_errors(data_dir: Path, entry: dict, message: str) -> None:
    with pytest.raises(EvaluatorConfigError, match=message):
        _build(data_dir, **entry)


def test_an_entry_without_a_type_lists_the_types() -> None:
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    with pytest.raises(EvaluatorConfigError, match=r"config.evals.test needs a 'type', one of: .*classification"):
        build_evaluators({"test": {"data": {}}}, {}, mesh, batch_size=4, data_dir=None, workdir=None)


def test_a_representation_the_model_does_not_output_names_the_evaluator(data_dir: Path) -> None:
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    (built,) = build_evaluators(
        {
            "fewshot": {
                "type": "fewshot_lsr",
                "datasets": {"twelve_images": ("test", "test")},
                "pp": "decode(channels=1)",
                "shots": (1,),
                "seeds": (0,),
                "representation": "prelogits",
            }
        },
        {"predict": _predict},
        mesh,
        batch_size=4,
        data_dir=str(data_dir),
        workdir=None,
    )
    with pytest.raises(EvaluatorConfigError, match=r"'fewshot'.*does not output 'prelogits'.*pre_logits"):
        built.evaluator.run({})

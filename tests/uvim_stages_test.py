"""UViM's two stages through the one trainer on real MNIST-5k digits: stage I's codebook moves and is
logged, stage II loads stage I from its workdir or a Hub folder through ``model_init``, its loss is
finite and decreasing, and a stage I of another codebook size is refused with a clear message.

One tiny stage-I run (``bv.uvim.configs.mnist:stage=1,runlocal``, 4 steps) is shared by the module.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import bv.pp
import bv.uvim
from bv.core import checkpoint, train
from bv.core.config import ConfigError, load_config
from bv.core.data import input_pipeline
from bv.core.model_init import load_pretrained
from bv.core.optimizers import make_optimizer
from bv.core.tasks import get_task
from bv.core.train_state import make_train_step
from bv.core.tree import flatten_with_names
from bv.uvim.configs import mnist
from bv.uvim.stage2 import OracleMismatchError, UvimTask

STAGE1 = f"{mnist.__name__}:stage=1,runlocal"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory, data_dir: str, monkeypatch_module: pytest.MonkeyPatch) -> Path:
    workdir = tmp_path_factory.mktemp("uvim") / "stage1"
    train.train(load_config(STAGE1), str(workdir))
    return workdir


@pytest.fixture(scope="module")
def monkeypatch_module(data_dir: str):
    mp = pytest.MonkeyPatch()
    mp.setenv("TFDS_DATA_DIR", data_dir)
    yield mp
    mp.undo()


def _batch(n: int = 16) -> dict[str, jax.Array]:
    builder = input_pipeline.get_builder("mnist5k")
    pp = bv.pp.get_preprocess_fn(mnist.PP)
    ds = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.take(n).map(pp).batch(n)
    return {k: jnp.asarray(v) for k, v in next(iter(tfds.as_numpy(ds))).items()}


def _latest(workdir: Path) -> str:
    path = checkpoint.latest(str(workdir))
    assert path is not None
    return path


def _stage2_config(oracle: str, **oracle_model: int):
    config = load_config(f"{mnist.__name__}:stage=2,runlocal,oracle={oracle}")
    config.oracle.model.update(oracle_model)
    return config


def test_stage1_moves_the_codebook_and_logs_code_usage(stage1: Path) -> None:
    records = [json.loads(line) for line in (stage1 / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "training_loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for r in steps:
        assert 0 <= r["codebook_zeros_ratio"] < 1 and 0 < r["codebook_max_ratio"] <= 1
        assert 1 <= r["codebook_perplexity"] <= 128 and r["codebook_restarts"] >= 0
    params = checkpoint.load_params(_latest(stage1))
    counts = np.asarray(params["state"]["counts"])
    # Fresh counts are all 1; four steps of momentum 0.99 over 16 digits x 8 codes give a total of
    # 128 * 0.99**4 + 128 * (1 + 0.99 + 0.99**2 + 0.99**3), less what restarts removed.
    assert counts.shape == (128,) and not np.allclose(counts, 1.0)
    assert 0.99**4 * 128 + 128 * sum(0.99**i for i in range(4)) == pytest.approx(counts.sum(), rel=0.01)


def test_stage2_loads_the_oracle_from_the_workdir_and_from_a_hub_folder(stage1: Path, tmp_path: Path) -> None:
    stored = dict(flatten_with_names(checkpoint.load_params(_latest(stage1))))
    folder = bv.uvim.save_stage1(str(stage1), str(tmp_path / "hub"))
    for source in (str(stage1), folder):
        config = _stage2_config(source)
        task = get_task(config)
        spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in _batch(2).items()}
        fresh = task.init(jax.random.PRNGKey(0), spec)
        loaded = load_pretrained(config.model_init, fresh, config=config)
        got = dict(flatten_with_names(loaded["oracle"]))
        assert sorted(got) == sorted(stored)
        for name, value in stored.items():
            np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_a_stage1_of_another_codebook_size_is_refused(stage1: Path, tmp_path: Path) -> None:
    folder = bv.uvim.save_stage1(str(stage1), str(tmp_path / "hub"))
    for source in (str(stage1), folder):
        with pytest.raises(OracleMismatchError) as e:
            get_task(_stage2_config(source, dict_size=256))
        message = str(e.value)
        assert "codebook of 128 entries" in message and "built for 256" in message
        assert "config.oracle.model.dict_size=128" in message
    with pytest.raises(OracleMismatchError, match="codes of length 8 tokens"):
        get_task(_stage2_config(str(stage1), code_len=16))


def test_stage2_without_an_oracle_is_a_config_error() -> None:
    config = load_config(f"{mnist.__name__}:stage=2,runlocal")
    with config.unlocked():
        config.uvim.random_oracle = False
    with pytest.raises(ConfigError, match="model_init must load the stage-I model into the oracle"):
        get_task(config)


def test_stage2_loss_is_finite_and_decreasing_and_the_oracle_stays_frozen(stage1: Path) -> None:
    config = _stage2_config(str(stage1))
    task = get_task(config)
    batch = _batch(16)
    spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    params = load_pretrained(config.model_init, task.init(jax.random.PRNGKey(0), spec), config=config)
    tx, fns = make_optimizer(config, params, 20)
    step = jax.jit(make_train_step(task, tx, fns, total_steps=20))
    state = {"params": params, "opt": tx.init(params), "rng": jax.random.PRNGKey(1)}
    losses = []
    for i in range(1, 13):
        state, metrics = step(state, batch, jnp.int32(i))
        losses.append(float(metrics["training_loss"]))
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0] - 0.2, losses  # one batch, 12 steps: the codes get learnt
    for (name, a), (_, b) in zip(flatten_with_names(params["oracle"]), flatten_with_names(state["params"]["oracle"])):
        np.testing.assert_array_equal(a, b, err_msg=name)
    # Predictions: greedy codes decoded by the oracle into an 11-class label map of the image's size.
    pred = jax.jit(task.predict_fns()["predict"])(state["params"], batch)["semantics"]
    assert pred.shape == (16, 28, 28) and 0 <= int(pred.min()) and int(pred.max()) < 11


@pytest.fixture(scope="module")
def stage2(stage1: Path) -> Path:
    workdir = stage1.parent / "stage2"
    config = _stage2_config(str(stage1))
    with config.unlocked():
        config.evals = {}
    train.train(config, str(workdir))
    return workdir


def test_a_stage2_run_exports_as_a_hub_folder_that_predicts_as_the_run_does(stage2: Path, tmp_path: Path) -> None:
    folder = bv.uvim.save_uvim(str(stage2), str(tmp_path / "uvim"))
    model = bv.uvim.UvimModel.from_pretrained(folder)
    stored = json.loads((tmp_path / "uvim" / "config.json").read_text())
    assert stored["model_name"] == "uvim_vtt" and stored["extra"]["oracle"]["uvim"]["adapter"]
    assert stored["model"]["vocab_size"] == 129 and stored["model"]["seq_len"] == 8  # derived from the oracle

    # The folder's predictions are the run's own predict function on its last checkpoint, exactly.
    task = get_task(_stage2_config(str(stage2.parent / "stage1")))
    assert isinstance(task, UvimTask)
    params = checkpoint.load_params(_latest(stage2))
    batch = _batch(8)
    want = jax.jit(task.predict_fns()["predict"])(params, batch)["semantics"]
    got = model.predict(batch["image"])["semantics"]
    np.testing.assert_array_equal(got, np.asarray(want))
    np.testing.assert_array_equal(model.codes(batch["image"]), np.asarray(task.sample_codes(params, batch["image"])))
    sampled = model.codes(batch["image"], temperature=1.0, top_k=5, rng=jax.random.PRNGKey(3))
    assert sampled.shape == (8, 8) and 0 <= sampled.min() and sampled.max() < 128

    # Saved again, loaded again: the same weights.
    again = bv.uvim.UvimModel.from_pretrained(model.save_pretrained(str(tmp_path / "again")))
    for (name, a), (_, b) in zip(flatten_with_names(model.params), flatten_with_names(again.params)):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_exporting_the_wrong_stage_is_a_clear_error(stage1: Path, stage2: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"not a stage-II 'uvim' run \(export a stage-I run with bv.uvim.save_stage1\)"
    ):
        bv.uvim.save_uvim(str(stage1), str(tmp_path / "x"))
    with pytest.raises(ValueError, match="not a stage-I 'uvim_vqvae' run"):
        bv.uvim.save_stage1(str(stage2), str(tmp_path / "y"))
    folder = bv.uvim.save_stage1(str(stage1), str(tmp_path / "stage1"))
    with pytest.raises(ValueError, match=r"holds a 'uvim_vqvae' model \(a stage I: load it into a stage-II run"):
        bv.uvim.UvimModel.from_pretrained(folder)
    assert not (tmp_path / "x").exists()

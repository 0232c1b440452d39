"""The bv-sam configs train with the real trainer: big_vision's GSAM ImageNet recipe on TFDS mock data, the
MNIST-5k config on the real digits (a few steps each), and the full-size recipe builds with big_vision's values."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Iterator

import jax
import pytest
import tensorflow_datasets as tfds

from bv.core import checkpoint, registry, train
from bv.core.config import load_config
from bv.core.optimizers import make_optimizer
from bv.core.run_plan import resolve_schedule
from bv.core.tasks import get_task
from bv.sam import SamTask
from bv.sam.configs import mnist, vit_i1k_gsam_no_aug  # noqa: F401  (loaded by name below)


@pytest.fixture(scope="module")
def mnist_tfds_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One TFDS folder for the module: MNIST-5k is built into it once, by the first run."""
    path = tmp_path_factory.mktemp("tfds")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TFDS_DATA_DIR", str(path))
        yield path


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_vit_i1k_gsam_no_aug_trains_two_steps_on_mock_data(tmp_path: Path) -> None:
    config = load_config("bv.sam.configs.vit_i1k_gsam_no_aug:runlocal,variant=mu/32")
    with tfds.testing.mock_data(num_examples=32):
        final = train.train(config, str(tmp_path))
    latest = checkpoint.latest(str(tmp_path))
    assert latest is not None and checkpoint.read_metadata(latest)["step"] == 2
    logged = [r for r in _records(tmp_path) if "sam_rho" in r]
    assert [r["step"] for r in logged] == [1, 2]
    # Warmup over one step: the first step's lr is 0, so rho is below rho_min (big_vision's lr_min = lr / 100).
    assert logged[0]["sam_rho"] == pytest.approx(0.1 - 0.5 * 0.01 / 0.99, rel=1e-5)
    assert logged[1]["sam_rho"] == pytest.approx(0.6, rel=1e-5)  # the peak lr
    assert 0.0 <= final["val/prec@1"] <= 1.0


@pytest.mark.parametrize("opt", ["gsam", "sam", "none"])
def test_mnist_config_trains_a_few_steps(opt: str, tmp_path: Path, mnist_tfds_dir: Path) -> None:
    config = load_config(f"bv.sam.configs.mnist:runlocal,opt={opt}")
    final = train.train(config, str(tmp_path / "run"))
    records = _records(tmp_path / "run")
    assert [r["step"] for r in records if "training_loss" in r] == [1, 2, 3, 4]
    assert any("sam_gap" in r for r in records) == (opt != "none")
    assert 0.0 <= final["test/prec@1"] <= 1.0


def test_full_size_configs_build_with_big_vision_settings() -> None:
    config = load_config("bv.sam.configs.vit_i1k_gsam_no_aug")
    task = get_task(config)
    assert isinstance(task, SamTask)
    o = task.options
    assert (o.gsam, o.rho_max, o.rho_min, o.alpha, o.lr_max, o.lr_min) == (True, 0.6, 0.1, 0.6, 0.003, 0.003 * 0.01)
    assert (config.input.batch_size, config.total_epochs, config.loss) == (4096, 300, "sigmoid_xent")
    params = jax.eval_shape(
        task.init, jax.random.PRNGKey(0), {"image": jax.ShapeDtypeStruct((2, 224, 224, 3), "float32")}
    )
    assert params["head"]["kernel"].shape == (768, 1000)  # B/32
    schedule = resolve_schedule(config.schedule, data_size=1_268_355, batch_size=4096, total_steps=92_000)
    tx, lrs = make_optimizer(config, params, 92_000, schedule=schedule)
    assert [name for name, _ in lrs] == ["lr"]
    jax.eval_shape(tx.init, params)
    # The few-shot probes' settings are all options of the fewshot_lsr evaluator.
    import bv.evaluators  # noqa: F401  (registers the evaluators)

    accepted = inspect.signature(registry.evaluators.get("fewshot_lsr")).parameters
    fewshot = {k: v for k, v in config.evals.fewshot.items() if k not in ("type", "log_steps")}
    assert set(fewshot) <= set(accepted)
    # --config.lr moves GSAM's lr range with it (big_vision's field references).
    lr_override = load_config("bv.sam.configs.vit_i1k_gsam_no_aug")
    lr_override.lr = 0.001
    overridden = get_task(lr_override)
    assert isinstance(overridden, SamTask) and overridden.options.lr_max == 0.001

    for opt, expected in (("gsam", True), ("sam", False)):
        sam_task = get_task(load_config(f"bv.sam.configs.mnist:opt={opt}"))
        assert isinstance(sam_task, SamTask) and sam_task.options.gsam is expected
    assert get_task(load_config("bv.sam.configs.mnist:opt=none")).__class__.__name__ == "ClassificationTask"
    with pytest.raises(ValueError, match="opt must be one of none, sam, gsam, got 'asam'"):
        load_config("bv.sam.configs.mnist:opt=asam")

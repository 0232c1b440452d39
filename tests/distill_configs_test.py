"""The bv-distill configs: big_vision's ImageNet and Flowers/Pet recipes train two steps on mock data.

The teachers are tiny BiT (``bit_paper``) folders made here; ``runlocal`` shrinks the students.
TFDS's mock data cannot fake oxford_iiit_pet (its random head boxes are invalid), so the pet
settings are checked without training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from bv.bit import BiTPaper
from bv.core import checkpoint, train
from bv.core.config import load_config
from bv.distill.configs import bit_i1k, flowers_pet  # noqa: F401  (loaded by name below)


@pytest.mark.parametrize(
    "spec, classes",
    [
        ("bv.distill.configs.bit_i1k:runlocal", 1000),
        ("bv.distill.configs.flowers_pet:runlocal,data=flowers,variant=long", 102),
    ],
)
def test_config_trains_two_steps_on_mock_data(spec: str, classes: int, tmp_path: Path) -> None:
    teacher = tmp_path / "teacher"
    BiTPaper.create(depth=26, width=0.5, num_classes=classes, resolution=32).save_pretrained(str(teacher))
    config = load_config(f"{spec},teacher={teacher}")
    with tfds.testing.mock_data(num_examples=32):
        final = train.train(config, str(tmp_path / "run"))
    latest = checkpoint.latest(str(tmp_path / "run"))
    assert latest is not None and checkpoint.read_metadata(latest)["step"] == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # Teacher and student start with zero heads (uniform predictions), so the KL starts at 0. With the
    # teacher's weights compiled into the step as constants, XLA:CPU once returned garbage here, NaN in some runs.
    losses = [r["distill_kl"] for r in records if "distill_kl" in r]
    assert losses and losses[0] == pytest.approx(0.0, abs=1e-6)
    assert any(k.startswith("teacher_") and k.endswith("prec@1") for k in final)
    assert any(k.startswith("distance_") and k.endswith("agree@1") for k in final)


def test_configs_need_a_teacher_and_known_settings() -> None:
    with pytest.raises(ValueError, match="bit_i1k needs teacher="):
        load_config("bv.distill.configs.bit_i1k")
    with pytest.raises(ValueError, match="data must be flowers or pet"):
        load_config("bv.distill.configs.flowers_pet:data=cars,teacher=x")
    config = load_config("bv.distill.configs.flowers_pet:data=pet,variant=long,teacher=x")
    assert (config.total_epochs, config.temperature, config.lr, config.wd) == (30_000, 2.0, 3e-3, 1e-5)

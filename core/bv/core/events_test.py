"""TensorBoard events, read back with TensorBoard's own reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from bv.core.events import EventWriter, LoggedRun, input_images


def _read(logdir: Path) -> event_accumulator.EventAccumulator:
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def test_records_are_scalars_beside_metrics_jsonl(tmp_path: Path) -> None:
    run = LoggedRun(str(tmp_path), quiet=True)
    run.write(1, {"training_loss": 2.5, "lr": 0.1, "note": "text is skipped"})
    run.write(2, {"training_loss": np.float32(1.5), "test/prec@1": 0.75})
    run.close()
    acc = _read(tmp_path)
    assert [(e.step, e.value) for e in acc.Scalars("training_loss")] == [(1, 2.5), (2, 1.5)]
    assert [(e.step, e.value) for e in acc.Scalars("test/prec@1")] == [(2, 0.75)]
    assert "note" not in acc.Tags()["scalars"]
    assert (tmp_path / "metrics.jsonl").is_file()


def test_a_resume_hides_what_a_killed_run_logged_past_its_checkpoint(tmp_path: Path) -> None:
    first = EventWriter(str(tmp_path))
    for step in range(1, 6):
        first.scalars(step, {"loss": float(step)})
    first.close()  # killed after step 5; its checkpoint is of step 3
    resumed = EventWriter(str(tmp_path), resume_step=3)
    for step in (4, 5):
        resumed.scalars(step, {"loss": 10.0 * step})
    resumed.close()
    assert [(e.step, e.value) for e in _read(tmp_path).Scalars("loss")] == [(1, 1), (2, 2), (3, 3), (4, 40), (5, 50)]


def test_text_and_images(tmp_path: Path) -> None:
    writer = EventWriter(str(tmp_path))
    writer.text("config", "lr: 0.1")
    images = input_images({"image": np.linspace(-1, 1, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3)}, count=4)
    assert images is not None and images.shape == (2, 4, 4, 3) and images.min() == 0 and images.max() == 1
    writer.images("input/train", images)
    writer.close()
    acc = _read(tmp_path)
    assert "config/text_summary" in acc.Tags()["tensors"]
    assert acc.Images("input/train")[0].height == 4  # the two side by side


def test_input_images_skips_batches_without_images() -> None:
    assert input_images({"text": np.zeros((2, 8))}, 4) is None
    assert input_images({"image": np.zeros((2, 8, 8, 3))}, 0) is None


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_infinite_values_are_left_out(tmp_path: Path, value: float) -> None:
    writer = EventWriter(str(tmp_path))
    writer.scalars(1, {"loss": value, "lr": 0.1})
    writer.close()
    assert "loss" not in _read(tmp_path).Tags()["scalars"]

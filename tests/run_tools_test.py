"""What a user does around a run: import a folder of PNGs as a data set, train on it, read its
TensorBoard events with TensorBoard's own reader, plot it with ``bv plot``.

One short run (4 steps of the MNIST ViT config, renamed onto the imported data set) serves all
the tests of this file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from bv.core import command

CLASSES = ("dark", "light")
SPLITS = {"train": 32, "test": 16}  # images per class


def _write_pngs(folder: Path) -> None:
    """``folder/<split>/<class>/*.png``: 28x28 grey noise, dark or light by class."""
    rng = np.random.default_rng(0)
    for split, count in SPLITS.items():
        for c, name in enumerate(CLASSES):
            (folder / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 120, (28, 28, 1)) + 120 * c
                png = tf.io.encode_png(pixels.astype(np.uint8)).numpy()
                (folder / split / name / f"{i:03d}.png").write_bytes(png)


def _bv(argv: list[str]) -> None:
    """Runs ``bv ARGV`` in this process; a non-zero exit fails the test."""
    try:
        command.main(argv)
    except SystemExit as e:
        assert not e.code, f"bv {' '.join(argv)} exited with {e.code}"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run_tools")
    _write_pngs(root / "pngs")
    data_dir = str(root / "tfds")
    _bv(["data", "import", str(root / "pngs"), "--name", "my_pngs", "--data-dir", data_dir])
    old = os.environ.get("TFDS_DATA_DIR")
    os.environ["TFDS_DATA_DIR"] = data_dir  # where the config's data set name is looked up
    try:
        _bv(
            [
                "train",
                "--config",
                "bv.vit.configs.mnist:runlocal",
                "--config.input.data.name=my_pngs",
                "--config.evals.test.data.name=my_pngs",
                "--config.total_steps=4",
                "--config.log_training_steps=1",
                "--config.evals.test.log_steps=2",
                "--workdir",
                str(root / "run"),
            ]
        )
    finally:
        if old is None:
            del os.environ["TFDS_DATA_DIR"]
        else:
            os.environ["TFDS_DATA_DIR"] = old
    return root


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_a_config_trains_on_the_imported_pngs(run: Path, capsys: pytest.CaptureFixture) -> None:
    evals = [r for r in _records(run / "run") if "test/prec@1" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert 0.0 <= evals[-1]["test/prec@1"] <= 1.0
    capsys.readouterr()
    _bv(["data", "list", "--data-dir", str(run / "tfds")])
    listed = capsys.readouterr().out
    assert "my_pngs" in listed and "train 64" in listed and "test 32" in listed, listed


def test_tensorboard_reads_the_runs_events(run: Path) -> None:
    acc = event_accumulator.EventAccumulator(str(run / "run"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    records = _records(run / "run")
    for name in ("training_loss", "lr", "test/prec@1", "ema/test/prec@1"):
        logged = [(r["step"], r[name]) for r in records if name in r]
        events = [(e.step, e.value) for e in acc.Scalars(name)]
        assert [s for s, _ in events] == [s for s, _ in logged], name
        np.testing.assert_allclose([v for _, v in events], [v for _, v in logged], rtol=1e-6, err_msg=name)
    assert "config/text_summary" in acc.Tags()["tensors"]
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"name": "my_pngs"' in text
    assert acc.Tags()["images"] == ["input/train"]


def test_bv_plot_draws_several_runs_on_one_figure(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import matplotlib.image

    other = tmp_path / "other_run"
    other.mkdir()
    records = _records(run / "run")
    for r in records:
        r.update({k: v * 0.5 for k, v in r.items() if k == "training_loss"})
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "curves.png"
    _bv(["plot", str(run / "run"), str(other), "--out", str(out)])
    image = matplotlib.image.imread(str(out))
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # something is drawn

    with pytest.raises(SystemExit) as exit_info:
        command.main(["plot", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2 and "has no metrics.jsonl" in capsys.readouterr().err


def test_bv_data_download_explains_manual_data_sets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Offline here: the manual-download data sets' instructions are what can be shown."""
    with pytest.raises(SystemExit) as exit_info:
        command.main(["data", "download", "imagenet2012", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(
        "bv data: error: imagenet2012 cannot be downloaded automatically"
    )
    assert "manual" in err and err.count("\n") == 1

"""bv-train's bad inputs: each one is a one-paragraph message and exit code 2, never a traceback.

Every case calls ``bv.core.train.main`` in-process, as the console script does, on the MNIST-5k
ViT config (``runlocal``) with one thing wrong, and checks the exit code, that stderr is one line
(``bv-train: error: ...``) and what the message says. The rows of ``docs/reliability.md`` point here.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from bv.core import train

CONFIG = "bv.vit.configs.mnist:runlocal"
PP = "decode(channels=1)|resize(28)|value_range(-1, 1)|onehot({}, key='label', key_result='labels')|keep('image', 'labels')"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """MNIST-5k built once for the module; ``TFDS_DATA_DIR`` points at it, as a user's shell would."""
    path = tmp_path_factory.mktemp("tfds")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TFDS_DATA_DIR", str(path))
        yield path


def _config_file(folder: Path, body: str) -> str:
    """A config file that starts from the MNIST ViT and changes it with ``body`` (which sees ``config``)."""
    path = folder / "config.py"
    path.write_text(
        "from bv.vit.configs import mnist\n\n\ndef get_config(arg=None):\n    config = mnist.get_config('runlocal')\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
        + "\n    return config\n"
    )
    return str(path)


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Runs bv-train; asserts exit code 2 and a one-line message without a traceback; returns the message."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    assert err.startswith("bv-train: error: ") and err.count("\n") == 1, err
    return err


def _run(workdir: Path, *overrides: str) -> list[str]:
    return ["--config", CONFIG, "--workdir", str(workdir), *overrides]


def _nothing_written(workdir: Path) -> bool:
    """No config, plan, metrics or checkpoint: at most the (released) lock file of the run that was refused."""
    return not workdir.exists() or not (set(os.listdir(workdir)) - {".bv-train.lock"})


# ---------------------------------------------------------------- configs


def test_a_config_file_with_a_syntax_error(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "typo.py"
    path.write_text("def get_config(arg=None)\n    return {}\n")
    err = _fails(["--config", str(path), "--workdir", str(tmp_path / "run")], capsys)
    assert f"Config {str(path)!r} is not valid Python: expected ':' in {path}, line 1" in err
    assert _nothing_written(tmp_path / "run")


def test_an_unknown_vit_variant(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = _config_file(tmp_path, "config.model = dict(variant='Q/16', pool_type='gap')")
    err = _fails(["--config", spec, "--workdir", str(tmp_path / "run")], capsys)
    assert "Unknown ViT variant 'Q/16': the size must be one of mu, Ti, S, M, B" in err
    assert _nothing_written(tmp_path / "run")


def test_an_unknown_vit_option(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = _config_file(tmp_path, "config.model = dict(variant='mu/7', widht=32)")
    err = _fails(["--config", spec, "--workdir", str(tmp_path / "run")], capsys)
    assert "Unknown ViT option (config.model key) 'widht'. Did you mean 'width'?" in err


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["--config.input.batch_size=30", "--config.grad_accum_steps=4"],
            "config.input.batch_size=30 must be divisible by the 1 device(s) the batch is split over (mesh axes "
            "('data',)) times config.grad_accum_steps=4, i.e. by 4. Use a multiple of 4, such as 28",
        ),
        (
            ["--config.input.batch_size=0"],
            "config.input.batch_size (the global batch size) must be a whole number >= 1, got 0.",
        ),
        (
            ["--config.grad_accum_steps=0"],
            "config.grad_accum_steps (the number of microbatches per step) must be a whole number >= 1, got 0.",
        ),
        (["--config.total_steps=-5"], "config.total_steps must be a finite number >= 0, but is -5."),
        (
            ["--config.lr=-0.003"],
            "config.lr=-0.003 is negative: training would climb the loss instead of descending it",
        ),
        (
            ["--config.input.batch_size=8192"],
            "config.input.batch_size=8192 is larger than the training data (4000 examples): every step would show "
            "each example about 2 times. Use a batch size of at most 4000",
        ),
        (["--config.schedule.decay_type=cos"], "Unknown decay_type 'cos'; valid ones:"),
        (["--config.mesh=[('data', 3)]"], "config.mesh=[('data', 3)] asks for 3 devices (3), but there are 1."),
    ],
    ids=[
        "batch-not-divisible",
        "batch-zero",
        "accum-zero",
        "total-steps-negative",
        "lr-negative",
        "batch-over-data",
        "schedule-typo",
        "mesh-too-big",
    ],
)
def test_bad_numbers_in_the_config(
    overrides: list[str], message: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    err = _fails(_run(tmp_path / "run", *overrides), capsys)
    assert message in err
    assert _nothing_written(tmp_path / "run")


def test_a_zero_learning_rate_is_allowed(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """lr=0 trains nothing on purpose (check a pipeline or an evaluator): accepted, the params stay as initialised."""
    train.main(_run(tmp_path / "run", "--config.lr=0", "--config.total_steps=1", "--config.evals={}"))
    assert (tmp_path / "run" / "config.json").is_file()


# ---------------------------------------------------------------- workdirs


def test_a_workdir_that_is_a_file(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("not a folder")
    err = _fails(_run(tmp_path / "notes.txt"), capsys)
    assert "it (or a folder above it) is a file, not a folder" in err
    assert (tmp_path / "notes.txt").read_text() == "not a folder"


def _read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create entries in: chmod for a normal user, sysfs for root."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        return folder
    folder = Path("/sys")  # read-only to root inside containers; checked, not assumed
    try:
        (folder / "bv-probe").mkdir()
    except OSError:
        return folder
    (folder / "bv-probe").rmdir()
    pytest.skip("no folder here is read-only to root")


def test_a_workdir_in_a_read_only_folder(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _fails(_run(_read_only_folder(tmp_path) / "run"), capsys)
    assert "cannot be used:" in err and "Pass a --workdir that is a folder you can write to" in err


# ---------------------------------------------------------------- data


def test_an_unknown_split_lists_the_splits(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _fails(_run(tmp_path / "run", "--config.input.data.split=trian"), capsys)
    assert (
        "No split 'trian' in data set 'mnist5k' (Unknown split 'trian'). Its splits are: train (4000 examples), "
        "test (1000 examples)." in err
    )


def test_an_unknown_data_set_suggests_close_names(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    err = _fails(_run(tmp_path / "run", "--config.input.data.name=mnist5"), capsys)
    assert "Unknown dataset 'mnist5'. Did you mean 'mnist5k', 'mnist'?" in err
    assert "cifar10" not in err and len(err) < 600  # not TFDS's list of every data set


def test_labels_out_of_range_of_the_onehot(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _fails(_run(tmp_path / "run", f"--config.input.pp={PP.format(5)}", "--config.num_classes=5"), capsys)
    assert (
        "config.input: data set 'mnist5k' has 10 classes (labels 0 to 9), but the pp one-hot encodes its labels "
        "into 5" in err
    )
    assert "labels 5 to 9 would become all-zero vectors" in err


def test_a_head_that_does_not_match_the_labels(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _fails(_run(tmp_path / "run", f"--config.input.pp={PP.format(12)}"), capsys)
    assert "one-hot encodes labels into 12 classes" in err and "config.num_classes=10" in err


def test_an_unknown_pp_op(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _fails(_run(tmp_path / "run", "--config.input.pp=decode|resise(28)"), capsys)
    assert "Unknown pp op 'resise'. Did you mean 'resize'" in err

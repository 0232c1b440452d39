"""Tests for bv.core.cli."""

from __future__ import annotations

import textwrap

import pytest

from bv.core import cli
from bv.core.cli import UsageError
from bv.core.config import ConfigError

CONFIG_FILE = textwrap.dedent(
    """
    import ml_collections
    from bv.core.config import parse_arg

    def get_config(arg=None):
        arg = parse_arg(arg, variant="S/16", fsdp=False)
        config = ml_collections.ConfigDict()
        config.variant = arg.variant
        config.fsdp = arg.fsdp
        config.lr = 0.001
        config.total_steps = 100
        config.model = dict(depth=12, widths=(1, 2))
        return config
    """
)


@pytest.fixture
def config_path(tmp_path) -> str:
    path = tmp_path / "tiny.py"
    path.write_text(CONFIG_FILE)
    return str(path)


def test_equals_form(config_path, tmp_path):
    args = cli.parse_train_args(
        [
            f"--config={config_path}:variant=B/16",
            f"--workdir={tmp_path}/wd",
            "--config.lr=0.5",
            "--config.model.depth=6",
        ]
    )
    assert args.config_spec == f"{config_path}:variant=B/16"
    assert args.workdir == f"{tmp_path}/wd"
    assert args.config.variant == "B/16"
    assert args.config.lr == 0.5 and args.config.model.depth == 6
    assert args.overrides == [("lr", "0.5"), ("model.depth", "6")]


def test_space_form_and_overrides_before_config(config_path):
    args = cli.parse_train_args(
        [
            "--config.lr",
            "-0.25",
            "--config",
            f"{config_path}:fsdp",
            "--workdir",
            "/tmp/x",
            "--config.model.widths",
            "(3, 4)",
        ]
    )
    assert args.config.fsdp is True
    assert args.config.lr == -0.25
    assert args.config.model.widths == (3, 4)
    assert args.workdir == "/tmp/x"


def test_bare_bool_override(config_path):
    args = cli.parse_train_args(["--config", config_path, "--config.fsdp", "--config.total_steps", "7"])
    assert args.config.fsdp is True and args.config.total_steps == 7
    with pytest.raises(UsageError, match="--config.lr needs a value"):
        cli.parse_train_args(["--config", config_path, "--config.lr"])


def test_default_config_used_when_no_flag(config_path):
    args = cli.parse_train_args(["--config.total_steps=5"], default_config=f"{config_path}:variant=L/14")
    assert args.config.variant == "L/14" and args.config.total_steps == 5
    assert args.workdir is None
    assert args.config_spec == f"{config_path}:variant=L/14"
    with pytest.raises(UsageError, match="No config given"):
        cli.parse_train_args([])


@pytest.mark.parametrize(
    "flag,suggestion", [("--confg.lr=1", "--config.lr"), ("--wrokdir=/tmp", "--workdir"), ("--workdirr", "--workdir")]
)
def test_unknown_flags_say_what_was_expected(config_path, flag, suggestion):
    with pytest.raises(UsageError) as e:
        cli.parse_train_args(["--config", config_path, flag])
    msg = str(e.value)
    assert f"Did you mean {suggestion!r}" in msg
    assert "Expected --config SPEC, --config.KEY=VALUE, --workdir DIR" in msg


def test_other_usage_errors(config_path):
    with pytest.raises(UsageError, match="Unexpected argument 'extra'"):
        cli.parse_train_args(["--config", config_path, "extra"])
    with pytest.raises(UsageError, match="--workdir needs a value"):
        cli.parse_train_args(["--config", config_path, "--workdir"])
    with pytest.raises(UsageError, match="--config is given twice"):
        cli.parse_train_args(["--config", config_path, "--config", config_path])
    with pytest.raises(UsageError, match="Invalid override"):
        cli.parse_train_args(["--config", config_path, "--config..lr=1"])


def test_bad_override_keys_and_values_are_config_errors(config_path):
    with pytest.raises(ConfigError, match="Did you mean 'depth'"):
        cli.parse_train_args(["--config", config_path, "--config.model.dept=3"])
    with pytest.raises(ConfigError, match="'total_steps' expects an int"):
        cli.parse_train_args(["--config", config_path, "--config.total_steps=many"])


def test_help_prints_usage(capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_train_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--config FILE.py[:ARGS]" in out and "--workdir DIR" in out


def test_or_exit_prints_error_and_exits_2(config_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_train_args_or_exit(["--config", config_path, "--wrokdir", "x"], prog="train")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "train: error: Unknown flag '--wrokdir'" in err and "usage: train" in err


# ---------------------------------------------------------------- the error contract of every command


def test_user_errors_print_one_paragraph_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e, cli.user_errors("bv-demo"):
        raise ConfigError("config.lr must be a finite number, such as 0.001; got 'fast'.")
    assert e.value.code == cli.EXIT_USER_ERROR == 2
    assert capsys.readouterr().err == "bv-demo: error: config.lr must be a finite number, such as 0.001; got 'fast'.\n"


def test_errors_named_in_also_are_user_errors_too(capsys):
    with pytest.raises(SystemExit) as e, cli.user_errors("bv-demo", also=(FileNotFoundError,)):
        raise FileNotFoundError("no such folder: runs/x")
    assert e.value.code == 2 and "bv-demo: error: no such folder: runs/x" in capsys.readouterr().err


def test_bugs_keep_their_traceback(capsys):
    with pytest.raises(ZeroDivisionError), cli.user_errors("bv-demo"):
        1 / 0  # noqa: B018 - a bug in bv, not a user's mistake
    assert capsys.readouterr().err == ""


def test_ctrl_c_exits_130_without_a_traceback(capsys):
    with pytest.raises(SystemExit) as e, cli.user_errors("bv-demo"):
        raise KeyboardInterrupt
    assert e.value.code == 130 and capsys.readouterr().err == "bv-demo: interrupted\n"


def test_a_config_file_with_a_syntax_error_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "broken.py"
    path.write_text("def get_config(arg=None):\n    return dict(lr=0.1,\n")
    with pytest.raises(
        ConfigError, match=r"broken.py' is not valid Python: '\(' was never closed in .*broken.py, line 2"
    ):
        cli.parse_train_args(["--config", str(path)])
    with pytest.raises(SystemExit) as e, cli.user_errors("bv-train"):
        cli.parse_train_args_or_exit(["--config", str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "`return dict(lr=0.1,`" in err

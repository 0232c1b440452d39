"""The one ``bv`` command: dispatch, help, and the user-error contract (one paragraph, exit code 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bv.core import command, push


def _fails(argv: list[str], capsys: pytest.CaptureFixture, prog: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        command.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1, err
    return err


def test_help_lists_every_command(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in command.COMMANDS:
        assert f"  {name} " in out


def test_no_command_prints_the_usage_and_exits_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        command.main([])
    assert exit_info.value.code == 2 and "usage: bv COMMAND" in capsys.readouterr().err


def test_an_unknown_command_is_one_paragraph_with_a_suggestion(capsys: pytest.CaptureFixture) -> None:
    err = _fails(["trian"], capsys, "bv")
    assert "Did you mean 'train'?" in err and "export" in err


def test_subcommands_report_under_their_own_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "has no config.json" in _fails(["export", str(tmp_path), str(tmp_path / "out")], capsys, "bv export")
    assert "is not a folder" in _fails(["push", str(tmp_path / "nothing"), "org/name"], capsys, "bv push")
    (tmp_path / "folder").mkdir()
    assert "has no config.json" in _fails(["push", str(tmp_path / "folder"), "org/name"], capsys, "bv push")


def test_push_options_of_a_workdir_are_refused_for_a_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(push.PushError, match="apply to a training workdir"):
        push.push(str(tmp_path), "org/name", ema=True)


def test_python_dash_m_bv_runs_the_command() -> None:
    out = subprocess.run([sys.executable, "-m", "bv", "--help"], capture_output=True, text=True, check=True)
    assert "usage: bv COMMAND" in out.stdout

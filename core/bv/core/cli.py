"""The trainer's command line: ``--config SPEC``, ``--workdir DIR`` and ``--config.KEY=VALUE`` overrides.

Parsed by hand rather than with absl flags, so it needs no global app and can be
called from tests and notebooks. Overrides are applied after the config is
loaded, whatever their order on the command line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import sys
from collections.abc import Iterator, Sequence

import ml_collections

from bv.core import config as config_lib
from bv.core.errors import UserError

__all__ = [
    "EXIT_USER_ERROR",
    "TrainArgs",
    "UsageError",
    "parse_train_args",
    "parse_train_args_or_exit",
    "usage",
    "user_errors",
]

# The exit code of a command stopped by a user error (argparse's for a bad command line); a bug exits with 1.
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

_FLAGS = ("--config", "--workdir", "--help")


class UsageError(UserError, ValueError):
    """A command line the trainer does not understand; the message says what it expected."""


@dataclasses.dataclass
class TrainArgs:
    """What the command line asks for: the loaded and overridden config, and where to write."""

    config: ml_collections.ConfigDict
    workdir: str | None
    config_spec: str
    overrides: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def usage(prog: str = "bv-train") -> str:
    """The help text printed by ``--help`` and after a usage error."""
    return (
        f"usage: {prog} --config FILE.py[:ARGS] [--workdir DIR] [--config.KEY=VALUE ...]\n"
        "\n"
        "  --config SPEC          config file (path/to/file.py) or module (bv.vit.configs.mnist); the text\n"
        "                         after ':' goes to its get_config(), e.g. file.py:variant=B/16,fsdp\n"
        "  --workdir DIR          where checkpoints, logs and config.json are written\n"
        "  --config.KEY=VALUE     override one existing config field, e.g. --config.lr=0.01 or\n"
        "                         --config.model.depth 12; a bool field alone (--config.fsdp) means true\n"
        "  --help                 show this message\n"
    )


def _unknown_flag(flag: str) -> UsageError:
    head = flag.split(".", 1)[0]
    close = difflib.get_close_matches(head, _FLAGS, n=1)
    hint = ""
    if close:
        hint = f" Did you mean {close[0] + flag[len(head) :] if close[0] == '--config' else close[0]!r}?"
    return UsageError(
        f"Unknown flag {flag!r}.{hint} Expected --config SPEC, --config.KEY=VALUE, --workdir DIR or --help."
    )


def _bare_bools(config: ml_collections.ConfigDict, overrides: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
    """Turns ``--config.flag`` without a value into ``flag=true`` where the field is a bool."""
    missing = object()
    result = []
    for key, value in overrides:
        if value is None:
            node: object = config
            for part in key.split("."):
                node = node.get(part, missing) if isinstance(node, ml_collections.ConfigDict) else missing
            if node is not missing and not isinstance(node, bool):
                raise UsageError(f"--config.{key} needs a value: --config.{key}=VALUE or --config.{key} VALUE.")
            value = "true"  # An unknown key is reported by apply_overrides, with suggestions.
        result.append((key, value))
    return result


def parse_train_args(
    argv: Sequence[str] | None = None, default_config: str | None = None, *, prog: str = "bv-train"
) -> TrainArgs:
    """Parses the trainer's arguments (without the program name; ``None`` reads ``sys.argv``).

    Loads the config named by ``--config`` (else ``default_config``) and applies the
    ``--config.KEY`` overrides. ``--help`` prints :func:`usage` and exits; anything
    not understood is a :class:`UsageError`, and a bad config key or value a
    :class:`bv.core.config.ConfigError`.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    spec: str | None = None
    workdir: str | None = None
    raw_overrides: list[tuple[str, str | None]] = []

    i = 0

    def take_value(flag: str, inline: str | None) -> str:
        """The flag's value: after ``=``, else the next argument."""
        nonlocal i
        if inline is not None:
            return inline
        if i >= len(args) or args[i].startswith("--"):
            raise UsageError(f"{flag} needs a value: {flag}=VALUE or {flag} VALUE.")
        i += 1
        return args[i - 1]

    while i < len(args):
        token = args[i]
        i += 1
        if token in ("--help", "-h"):
            print(usage(prog))
            raise SystemExit(0)
        if not token.startswith("-"):
            raise UsageError(f"Unexpected argument {token!r}: all arguments are flags such as --config SPEC.")
        flag, has_value, value = token.partition("=")
        inline = value if has_value else None
        if flag == "--config":
            if spec is not None:
                raise UsageError(f"--config is given twice ({spec!r} and another); give it once.")
            spec = take_value(flag, inline)
        elif flag == "--workdir":
            if workdir is not None:
                raise UsageError(f"--workdir is given twice ({workdir!r} and another); give it once.")
            workdir = take_value(flag, inline)
        elif flag.startswith("--config."):
            key = flag[len("--config.") :]
            if not key or not all(key.split(".")):
                raise UsageError(f"Invalid override {token!r}: expected --config.KEY=VALUE, e.g. --config.lr=0.1.")
            bare = inline is None and (i >= len(args) or args[i].startswith("--"))
            raw_overrides.append((key, None if bare else take_value(flag, inline)))
        else:
            raise _unknown_flag(flag)

    if spec is None:
        spec = default_config
    if spec is None:
        raise UsageError("No config given: pass --config path/to/config.py[:ARGS].")

    config = config_lib.load_config(spec)
    overrides = _bare_bools(config, raw_overrides)
    config_lib.apply_overrides(config, overrides)
    if workdir is not None:
        workdir = os.path.expanduser(workdir)
    return TrainArgs(config=config, workdir=workdir, config_spec=spec, overrides=overrides)


@contextlib.contextmanager
def user_errors(prog: str, *, also: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """The error contract of every bv command: a user's mistake is one paragraph and exit code 2.

    Inside the ``with`` block, a :class:`bv.core.errors.UserError` (or one of ``also``) is printed
    to stderr as ``PROG: error: MESSAGE`` and the command exits with :data:`EXIT_USER_ERROR`; Ctrl-C
    prints ``PROG: interrupted`` and exits with 130. Anything else is a bug in bv and propagates
    with its traceback.
    """
    caught: tuple[type[BaseException], ...] = (UserError, *also)
    try:
        yield
    except caught as e:
        print(f"{prog}: error: {_paragraph(e)}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None


def _paragraph(error: BaseException) -> str:
    """The error's message, or its class name when it has none."""
    return str(error).strip() or type(error).__name__


def parse_train_args_or_exit(
    argv: Sequence[str] | None = None, default_config: str | None = None, *, prog: str = "bv-train"
) -> TrainArgs:
    """:func:`parse_train_args` for a ``main()``: a bad command line is printed with the usage, then exit code 2.

    Other user errors (a bad config key or value, a config file that does not load) are printed
    as one paragraph, as :func:`user_errors` does.
    """
    try:
        return parse_train_args(argv, default_config, prog=prog)
    except UsageError as e:
        print(f"{prog}: error: {e}\n\n{usage(prog)}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None

"""``bv``: the one command, ``bv train | eval | export | push | data | plot | bench``.

``python -m bv`` is the same command. ``bv-train``, ``bv-eval`` and ``bv-export`` stay
as aliases of ``bv train``, ``bv eval`` and ``bv export``. Every subcommand keeps the
error contract of :func:`bv.core.cli.user_errors`: a user's mistake prints one
paragraph as ``bv SUBCOMMAND: error: ...`` and exits with code 2; ``--help`` prints
the subcommand's usage and exits with 0.

A subcommand's module is imported only when it runs, so ``bv export`` and ``bv push``
work in the lean install (no TensorFlow), and the ones that need the ``train`` extra
(``train``, ``eval``, ``data``, ``plot``) name it when it is missing.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import sys
from collections.abc import Callable, Sequence

from bv.core import cli
from bv.core.errors import UserError

__all__ = ["COMMANDS", "main", "usage"]


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: what it does (for ``bv --help``), and ``module:function(argv, prog=...)`` that runs it."""

    summary: str
    target: str
    needs_train_extra: bool = False

    def run(self, argv: list[str], prog: str) -> None:
        if self.needs_train_extra:
            from bv.core.extras import require_train

            with cli.user_errors(prog):
                require_train(prog)
        module, function = self.target.split(":")
        entry: Callable[..., None] = getattr(importlib.import_module(module), function)
        entry(argv, prog=prog)


COMMANDS: dict[str, Command] = {
    "train": Command("train a config: bv train --config FILE.py[:ARGS] --workdir DIR", "bv.core.train:main", True),
    "eval": Command(
        "run a config's evaluators on a model: bv eval --config FILE --model SOURCE", "bv.core.evaluate:main", True
    ),
    "export": Command(
        "turn a workdir's checkpoint into a Hub model folder: bv export WORKDIR OUT", "bv.core.export:main"
    ),
    "push": Command(
        "upload a model folder or a workdir's model to the Hub: bv push SOURCE ORG/NAME", "bv.core.push:main"
    ),
    "data": Command(
        "prepare data sets: bv data import FOLDER|NPZ --name N, bv data list, bv data download NAME...",
        "bv.core.data.commands:main",
    ),
    "plot": Command(
        "draw runs' loss, learning rate and eval metrics: bv plot WORKDIR... --out curves.png", "bv.core.plot:main"
    ),
    "bench": Command("time a model's inference here: bv bench MODEL [--batch-size 32]", "bv.core.bench:main"),
}


def usage() -> str:
    """``bv --help``: the subcommands and what each does."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return (
        "usage: bv COMMAND [ARGS...]   (or: python -m bv COMMAND ...)\n\n"
        "commands:\n" + "\n".join(lines) + "\n\n"
        "`bv COMMAND --help` describes a command's flags. Training, evaluation, data tools and plots need\n"
        'the train extra: pip install "bv-core[train]". --version prints the installed bv packages.\n'
    )


class UnknownCommandError(UserError, ValueError):
    """``bv`` was given a command it does not have."""


def _versions() -> str:
    import importlib.metadata as md

    found = []
    for dist in md.distributions():
        name = (dist.metadata["Name"] or "").replace("_", "-").lower()
        if name.startswith("bv-"):
            found.append(f"{name} {dist.version}")
    return "\n".join(sorted(set(found))) or "no bv package is installed as a distribution (running from sources)"


def main(argv: Sequence[str] | None = None) -> None:
    """The ``bv`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        raise SystemExit(0 if args else cli.EXIT_USER_ERROR)
    if args[0] == "--version":
        print(_versions())
        raise SystemExit(0)
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        with cli.user_errors("bv"):
            close = difflib.get_close_matches(name, COMMANDS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownCommandError(
                f"Unknown command {name!r}.{hint} Commands: {', '.join(COMMANDS)} (bv --help describes them)."
            )
    COMMANDS[name].run(rest, f"bv {name}")


def alias(name: str) -> Callable[[], None]:
    """The entry point of the old ``bv-NAME`` console script: ``bv NAME`` under its old name."""

    def run() -> None:
        COMMANDS[name].run(sys.argv[1:], f"bv-{name}")

    run.__name__ = run.__qualname__ = f"{name}_alias"
    return run


train_alias = alias("train")
eval_alias = alias("eval")
export_alias = alias("export")


if __name__ == "__main__":
    main()

"""Plug-in registries: configs name models, pp ops, evaluators and tasks by string.

Importing a package registers what it provides, e.g. ``import bv.vit`` adds the
``vit`` model. Looking up an unknown name raises an error that lists the known
names, so a typo in a config is caught with a useful message.

Registered names may be called with arguments written as Python literals, as in
a pp string: ``registry.call("resize(224, method='bilinear')")``.
"""

from __future__ import annotations

import ast
import difflib
import importlib
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError would quote the message.
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to factories for one kind of plug-in (``"pp op"``, ``"model"``, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """Decorator that registers a factory under ``name``."""

        def decorator(factory: T) -> T:
            if name in self._entries and not replace and self._entries[name] is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._entries[name]!r}.")
            self._entries[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> T:
        """The factory registered as ``name``; an unknown name lists the known ones."""
        try:
            return self._entries[name]
        except KeyError:
            known = sorted(self._entries)
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}.{hint} Known {self.kind} names: {', '.join(known) or '(none registered)'}."
            ) from None

    def call(self, spec: str, **extra_kwargs: Any) -> Any:
        """Parses ``"name(arg, key=value)"`` (or a bare ``"name"``) and calls the factory."""
        name, args, kwargs = parse_call(spec)
        return self.get(name)(*args, **{**kwargs, **extra_kwargs})

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)


def parse_call(spec: str) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """Splits ``"name(1, 'a', k=2.0)"`` into ``("name", (1, "a"), {"k": 2.0})``.

    Arguments must be Python literals; anything else is a clear error.
    """
    spec = spec.strip()
    try:
        tree = ast.parse(spec, mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"Cannot parse {spec!r}: expected 'name' or 'name(literal args)'. ({e.msg})") from None
    if isinstance(tree, ast.Name):
        return tree.id, (), {}
    if isinstance(tree, ast.Attribute):  # dotted names such as "bv.task"
        return ast.unparse(tree), (), {}
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, (ast.Name, ast.Attribute))):
        raise ValueError(f"Cannot parse {spec!r}: expected 'name' or 'name(literal args)'.")
    name = ast.unparse(tree.func)
    try:
        args = tuple(ast.literal_eval(a) for a in tree.args)
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in tree.keywords if kw.arg}
    except ValueError:
        raise ValueError(
            f"Cannot parse the arguments of {spec!r}: they must be Python literals (numbers, strings, tuples, lists, dicts)."
        ) from None
    return name, args, kwargs


# The registries every package plugs into.
models: Registry[Callable[..., Any]] = Registry("model")
pp_ops: Registry[Callable[..., Any]] = Registry("pp op")
evaluators: Registry[Callable[..., Any]] = Registry("evaluator")
tasks: Registry[Callable[..., Any]] = Registry("task")
datasets: Registry[Callable[..., Any]] = Registry("dataset")
hub_models: Registry[Callable[..., Any]] = Registry("Hub model class")
tokenizers: Registry[Callable[..., Any]] = Registry("tokenizer")


def import_model_package(name: str) -> None:
    """Imports ``bv.<name>`` (``vit`` -> ``bv.vit``, ``bit_paper`` -> ``bv.bit``) so it registers its model.

    A missing package is not an error here: the registry lookup that follows lists the known names.
    """
    base = name.split(".")[0]
    # "bit_paper" lives in bv.bit: try the whole name, then the part before the first "_".
    for package in dict.fromkeys([base, base.split("_")[0]]):
        try:
            importlib.import_module(f"bv.{package}")
            return
        except ImportError:
            continue

"""Plug-in registries: configs name models, pp ops, evaluators and tasks by string.

Importing a package registers what it provides, e.g. ``import bv.vit`` adds the
``vit`` model. Looking up an unknown name raises an error that lists the known
names, so a typo in a config is caught with a useful message.

Registered names may be called with arguments written as Python literals, as in
a pp string: ``registry.call("resize(224, method='bilinear')")``.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import importlib.util
from typing import Any, Callable, Generic, Iterator, TypeVar

from bv.core.errors import UserError

T = TypeVar("T")


class UnknownNameError(UserError, KeyError):
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
            if name in self._entries and not replace and self._entries[name] != factory:  # equal: the same entry again
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
        factory: Any = self.get(name)
        return factory(*args, **{**kwargs, **extra_kwargs})

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


# ----------------------------------------------------------------------------
# The registries every package plugs into: all of them live here.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A registered model: how to build its Flax module, and the Hub class that loads and saves it."""

    factory: Callable[..., Any]  # factory(num_classes=..., **config.model) -> flax.linen.Module
    hub_class: Any = None  # a bv.core.hub.PretrainedModel subclass, or None (no Hub folders)
    kind: str = "image"  # "image": follows bv.core.contracts.ImageModel; projects may add kinds ("image_text")


models: Registry[ModelEntry] = Registry("model")
pp_ops: Registry[Callable[..., Any]] = Registry("pp op")
evaluators: Registry[Callable[..., Any]] = Registry("evaluator")
tasks: Registry[Callable[..., Any]] = Registry("task")
datasets: Registry[Callable[..., Any]] = Registry("dataset")
tokenizers: Registry[Callable[..., Any]] = Registry("tokenizer")
losses: Registry[Callable[..., Any]] = Registry("loss")
sharding_strategies: Registry[Callable[..., Any]] = Registry("sharding strategy")
optimizers: Registry[Callable[..., Any]] = Registry("big_vision optimizer")


def register_model(
    name: str, factory: Callable[..., Any], *, hub_class: Any = None, kind: str = "image", replace: bool = False
) -> None:
    """Registers a model once: its module factory, its Hub class if it has one, and its kind."""
    models.register(name, replace=replace)(ModelEntry(factory, hub_class, kind))


def model_entry(name: str) -> ModelEntry:
    """The model ``name``, importing ``bv.<package>`` first when it is not registered yet."""
    if name not in models:
        import_model_package(name)
    return models.get(name)


def model_factory(name: str) -> Callable[..., Any]:
    """The function that builds the Flax module of model ``name``."""
    return model_entry(name).factory


def hub_class(name: str) -> Any:
    """The Hub class (``PretrainedModel`` subclass) of model ``name``, or None if it has none."""
    return model_entry(name).hub_class


def hub_model_names() -> list[str]:
    """The registered models that have a Hub class."""
    return [n for n in models.names() if models.get(n).hub_class is not None]


# Models whose name does not start with their package's: the package to import for them.
MODEL_PACKAGES: dict[str, str] = {"two_towers": "lit"}


def import_model_package(name: str) -> None:
    """Imports the package that provides model ``name`` so that it registers it.

    ``vit`` -> ``bv.vit``, ``bit_paper`` -> ``bv.bit`` (the part before the first
    ``_``), and names listed in :data:`MODEL_PACKAGES` (``two_towers`` -> ``bv.lit``).

    A package that is not installed is not an error here: the registry lookup that
    follows lists the known names. A package that is installed but fails to import
    (a missing dependency, a broken install) is, with the real cause.
    """
    base = name.split(".")[0]
    # "bit_paper" lives in bv.bit: try the whole name, then the part before the first "_".
    candidates = [MODEL_PACKAGES[base]] if base in MODEL_PACKAGES else []
    for package in dict.fromkeys([*candidates, base, base.split("_")[0]]):
        module = f"bv.{package}"
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            continue
        try:
            importlib.import_module(module)
        except Exception as e:
            raise ImportError(
                f"The package {module} is installed (it provides the model {name!r}), but importing it failed: "
                f"{type(e).__name__}: {e}. Reinstall it, or install what it needs."
            ) from e
        return

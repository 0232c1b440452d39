"""Python config files: load them, parse their argument string, override fields, save them.

A config is a Python file (or module) with ``get_config(arg)`` returning an
``ml_collections.ConfigDict``. ``--config file.py:variant=B/16,fsdp`` hands the
text after ``:`` to ``get_config``, which reads it with :func:`parse_arg`;
``--config.lr=0.03`` then overrides single fields through :func:`apply_overrides`.
Every mistake (unknown key, wrong type, missing file) is a :class:`ConfigError`
that says what was expected and suggests the closest valid name.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from bv.core.errors import UserError

__all__ = [
    "ConfigError",
    "ConfigTypeError",
    "apply_overrides",
    "check_known",
    "load_config",
    "parse_arg",
    "parse_value",
    "save_config",
    "to_json",
]

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


class ConfigError(UserError, ValueError):
    """A config that cannot be loaded, parsed or overridden; the message says how to fix it."""


class ConfigTypeError(ConfigError, TypeError):
    """A config value of the wrong kind (an unknown option name, a dict where a string belongs)."""


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_known(what: str, given: Iterable[str], known: Iterable[str]) -> None:
    """A :class:`ConfigError` for the first of ``given`` not in ``known`` (``what``: "ViT option", ...)."""
    known = sorted(known)
    for name in given:
        if name not in known:
            raise ConfigError(f"Unknown {what} {name!r}.{_did_you_mean(name, known)} Known: {', '.join(known)}.")


def _type_name(t: type) -> str:
    """``int`` -> ``"an int"``; ConfigDict -> ``"a dict"``."""
    name = "dict" if issubclass(t, (Mapping, ml_collections.ConfigDict)) else t.__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def parse_value(text: str, expected: type, key: str) -> Any:
    """Parses command-line ``text`` into a value of type ``expected`` (the type of the field ``key``).

    bool accepts true/false/1/0/yes/no/on/off (any case); int also accepts integral
    floats such as ``1e4``; list, tuple and dict take Python literals (``1,2`` is a
    tuple); ``NoneType`` means the field had no type yet: a Python literal is used if
    ``text`` is one, else the text itself.
    """
    stripped = text.strip()

    def mismatch(extra: str = "") -> ConfigError:
        return ConfigError(f"Config key {key!r} expects {_type_name(expected)}, but got {text!r}.{extra}")

    if expected is bool:
        lowered = stripped.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise mismatch(" Use true/false (or 1/0).")
    if expected is int:
        try:
            return int(stripped)
        except ValueError:
            pass
        try:
            as_float = float(stripped)
        except ValueError:
            raise mismatch() from None
        if not as_float.is_integer():
            raise mismatch(" It is not a whole number.")
        return int(as_float)
    if expected is float:
        try:
            return float(stripped)
        except ValueError:
            raise mismatch() from None
    if expected is str:
        return text
    if expected is type(None):
        try:
            return ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            return text
    # Containers (and any other literal type): a Python literal of a compatible type.
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError):
        raise mismatch(" Write it as a Python literal, quoting strings, e.g. (1, 2) or ['a', 'b'].") from None
    if issubclass(expected, (list, tuple)) and isinstance(value, (list, tuple)):
        return expected(value)
    if issubclass(expected, (Mapping, ml_collections.ConfigDict)) and isinstance(value, dict):
        return value
    if expected is not object and not isinstance(value, expected):
        raise mismatch()
    return value


def parse_arg(arg: str | None, /, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses the ``get_config`` argument string, e.g. ``"variant=B/16,fsdp,lr=0.1"``.

    Each keyword names an accepted key and its default; the default's type decides
    how the text is parsed (a bare ``fsdp`` sets a bool to True; a ``None`` default
    keeps the text). A lone value without ``=`` that names no key is the value of
    the first key, so ``mnist.py:B/16`` means ``variant=B/16``. Configs call it as
    ``arg = parse_arg(arg, variant="S/16", runlocal=False)``.
    """
    result = dict(defaults)
    items = [item.strip() for item in (arg or "").split(",")]
    items = [item for item in items if item]
    first = next(iter(defaults), None)
    if (
        len(items) == 1
        and "=" not in items[0]
        and items[0] not in defaults
        and first is not None
        and not isinstance(defaults[first], bool)
    ):
        items = [f"{first}={items[0]}"]

    seen: set[str] = set()
    for item in items:
        key, has_value, text = (part.strip() for part in item.partition("="))
        if key not in defaults:
            known = ", ".join(defaults) or "(this config takes no arguments)"
            raise ConfigError(
                f"Unknown config argument {key!r} in {arg!r}.{_did_you_mean(key, defaults)} Known arguments: {known}."
            )
        if key in seen:
            raise ConfigError(f"Config argument {key!r} is given twice in {arg!r}.")
        seen.add(key)
        default = defaults[key]
        if not has_value:
            if not isinstance(default, bool):
                raise ConfigError(f"Config argument {key!r} needs a value, e.g. {key}={default!r}.")
            result[key] = True
            continue
        result[key] = parse_value(text, type(default), key)
    return ml_collections.ConfigDict(result)


def _split_spec(spec: str) -> tuple[str, str | None]:
    """``"a/b.py:x=1"`` -> ``("a/b.py", "x=1")``; a ``:`` inside the arguments is kept."""
    at = spec.find(".py:")
    if at >= 0:
        return spec[: at + 3], spec[at + 4 :]
    if spec.endswith(".py"):
        return spec, None
    head, sep, tail = spec.partition(":")
    return head, (tail if sep else None)


def _looks_like_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target or os.path.isfile(target)


def _import_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise ConfigError(f"Config file {path!r} does not exist (looked in {os.getcwd()!r}).")
    abspath = os.path.abspath(path)
    digest = hashlib.sha1(abspath.encode()).hexdigest()[:10]
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f"_bv_config_{''.join(c if c.isalnum() else '_' for c in stem)}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, abspath)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"Cannot load config file {path!r} as Python; it should be a .py file.")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # So that dataclasses and pickling inside the config work.
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(name, None)
        raise _syntax_error(path, e) from None
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _syntax_error(where: str, e: SyntaxError) -> ConfigError:
    """A config that is not valid Python: the file, line and column, the line itself and Python's reason."""
    line = (e.text or "").rstrip("\n")
    shown = f" `{line.strip()}`" if line.strip() else ""
    at = f"line {e.lineno}" + (f", column {e.offset}" if e.offset else "")
    file = e.filename if e.filename and not e.filename.startswith("<") else where
    return ConfigError(
        f"Config {where!r} is not valid Python: {e.msg} in {file}, {at}:{shown}. Fix the file and run again."
    )


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except SyntaxError as e:
        raise _syntax_error(name, e) from None
    except ModuleNotFoundError as e:
        if e.name is not None and name != e.name and not name.startswith(e.name + "."):
            raise  # The config itself imports something missing: show that error.
        raise ConfigError(
            f"Config {name!r} is neither a file nor an importable module. "
            "Give a path such as configs/mnist.py or a module such as bv.vit.configs.mnist."
        ) from None


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``"path/to/file.py[:args]"`` or ``"package.module[:args]"`` by calling its ``get_config``.

    The text after ``:`` is passed to ``get_config`` as one string; without ``:``,
    ``get_config()`` is called with no argument (or ``None`` if it requires one).
    """
    target, arg = _split_spec(spec)
    if not target:
        raise ConfigError(f"Empty config spec {spec!r}: expected path/to/config.py[:args] or a module name.")
    module = _import_file(target) if _looks_like_file(target) else _import_module(target)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"Config {target!r} defines no get_config(arg) function; every config file needs one.")

    params = list(inspect.signature(get_config).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_arg = bool(positional) or any(p.kind == p.VAR_POSITIONAL for p in params)
    if arg is None:
        needs_arg = any(p.default is p.empty for p in positional)
        config = get_config(None) if needs_arg else get_config()
    elif not takes_arg:
        raise ConfigError(f"Config {target!r} takes no arguments, but {spec!r} passes {arg!r}.")
    else:
        config = get_config(arg)

    if isinstance(config, ml_collections.ConfigDict):
        return config
    if isinstance(config, Mapping):
        return ml_collections.ConfigDict(dict(config))
    raise ConfigError(f"get_config in {target!r} returned a {type(config).__name__}; it must return a ConfigDict.")


def _field_type(node: ml_collections.ConfigDict, name: str) -> type:
    """The declared type of a field; placeholders such as ``placeholder(int)`` report ``int``."""
    try:
        declared: type = node.get_type(name)
        return declared
    except (AttributeError, KeyError):
        return type(node[name])


# Top-level keys the trainer reads with a default, which ``--config.KEY=VALUE`` may set even when the
# config does not spell them out.
TRAINER_SWITCHES: dict[str, Any] = {"ckpt_async": True, "ckpt_compress": False, "resume": None}


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Iterable[tuple[str, str]]
) -> ml_collections.ConfigDict:
    """Sets dotted fields (``("model.width", "384")``) from text, parsed to each field's existing type.

    Only existing fields can be set, so a typo is an error with a suggestion. The
    text ``None`` clears any field. ``config`` is changed in place and returned.
    """
    for dotted, text in overrides:
        parts = dotted.split(".")
        if not all(parts):
            raise ConfigError(f"Invalid config key {dotted!r}: expected dotted field names such as 'model.width'.")
        node = config
        for depth, name in enumerate(parts):
            where = ".".join(parts[:depth]) or "the top level"
            if not isinstance(node, ml_collections.ConfigDict):
                raise ConfigError(
                    f"Cannot set {dotted!r}: {'.'.join(parts[:depth])!r} is a {type(node).__name__}, "
                    "not a group of fields."
                )
            if name not in node and depth == 0 and len(parts) == 1 and name in TRAINER_SWITCHES:
                with node.unlocked():
                    node[name] = TRAINER_SWITCHES[name]  # a trainer default few configs spell out
            if name not in node:
                known = ", ".join(sorted(node.keys())) or "(none)"
                raise ConfigError(
                    f"Unknown config key {dotted!r}: no field {name!r} at {where}.{_did_you_mean(name, node.keys())} "
                    f"Valid keys there: {known}."
                )
            if depth < len(parts) - 1:
                node = node[name]
        name = parts[-1]
        value = None if text.strip() == "None" else parse_value(text, _field_type(node, name), dotted)
        if isinstance(node, ml_collections.FrozenConfigDict):
            raise ConfigError(f"Cannot set {dotted!r}: the config is frozen.")
        try:
            with node.unlocked():
                node[name] = value
        except TypeError as e:
            raise ConfigError(f"Cannot set config key {dotted!r} to {text!r}: {e}") from None
    return config


def _jsonable(value: Any) -> Any:
    if isinstance(value, (ml_collections.ConfigDict, Mapping)):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    item = getattr(value, "item", None)  # numpy scalars and 0-d arrays.
    if callable(item) and getattr(value, "ndim", None) == 0:
        try:
            return _jsonable(item())
        except (TypeError, ValueError):
            pass
    return repr(value)


def to_json(config: ml_collections.ConfigDict | Mapping[str, Any]) -> str:
    """The config as indented JSON: tuples become lists, anything else not JSON-able its ``repr``."""
    return json.dumps(_jsonable(config), indent=2)


def save_config(config: ml_collections.ConfigDict | Mapping[str, Any], workdir: str) -> str:
    """Writes ``workdir/config.json`` atomically (creating ``workdir``) and returns its path."""
    from bv.core.files import write_text

    return write_text(os.path.join(workdir, "config.json"), to_json(config) + "\n")

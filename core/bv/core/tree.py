"""Name the leaves of a parameter tree by their `/`-joined paths.

Regexes over these names (``Transformer/encoderblock_0/.*/kernel``) drive
freezing, lr and weight-decay multipliers, sharding and checkpoint matching.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import jax


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_name(path: Sequence[Any]) -> str:
    """``(DictKey('a'), GetAttrKey('mu'), SequenceKey(0))`` -> ``"a/mu/0"``."""
    return "/".join(_key_name(k) for k in path)


def flatten_with_names(tree: Any) -> list[tuple[str, Any]]:
    """The leaves of ``tree`` with their `/`-joined names, in tree order."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_name(path), leaf) for path, leaf in leaves]


def map_with_names(fn: Callable[[str, Any], Any], tree: Any) -> Any:
    """Like ``jax.tree.map`` but ``fn`` also gets the leaf's name."""
    return jax.tree_util.tree_map_with_path(lambda path, leaf: fn(path_name(path), leaf), tree)


def first_match(name: str, rules: Sequence[tuple[str, Any]], default: Any = None) -> Any:
    """The value of the first ``(regex, value)`` rule whose regex fully matches ``name``."""
    for pattern, value in rules:
        if re.fullmatch(pattern, name):
            return value
    return default


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dicts from ``/``-joined leaf names (the inverse of :func:`flatten_with_names` for dicts).

    A name that is both a leaf and a group (``"a"`` and ``"a/b"``) is a ``ValueError``.
    """
    out: dict[str, Any] = {}
    for name, value in flat.items():
        parts = name.split("/")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"{'/'.join(parts[: i + 1])!r} is both an array and a prefix of {name!r}.")
            node = child
        if parts[-1] in node:
            raise ValueError(f"{name!r} is both an array and a prefix of other names.")
        node[parts[-1]] = value
    return out

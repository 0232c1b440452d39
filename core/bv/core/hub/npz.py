"""big_vision's ``.npz`` checkpoint files: read and write, never unpickling.

The format is a plain (uncompressed) numpy zip archive: one array per leaf,
named by its ``/``-joined path (``Transformer/encoderblock_0/LayerNorm_0/scale``).
numpy has no bfloat16, so big_vision's bfloat16 arrays are stored as 2-byte void
(``V2``) arrays and viewed back as bfloat16 when read; this module does the same.
How a model's layouts map onto bv's parameters is the model package's business
(e.g. ``bv.vit.big_vision_npz``).

Two-tower (LiT, SigLIP) checkpoints keep the image tower under ``img/``: select
it with ``load_npz(path, subtree="img")`` or the ``"file.npz:img"`` form.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterable
from typing import Any

import ml_dtypes
import numpy as np

from bv.core.files import atomic_write
from bv.core.tree import flatten_with_names

__all__ = ["WRAPPERS", "flat_leaves", "load_npz", "save_npz", "split_npz_path"]

_BF16 = np.dtype(ml_dtypes.bfloat16)
_VOID2 = np.dtype("V2")
# Wrappers around the params in training checkpoints: optax-era first, then flax.optim-era.
WRAPPERS = ("params", "opt/target")
_SUBTREE_RE = re.compile(r"\w+(?:/\w+)*/?")


# --------------------------------------------------------------------------- files


def split_npz_path(spec: str) -> tuple[str, str | None]:
    """Splits ``"file.npz:img"`` into ``("file.npz", "img")``; ``"file.npz"`` gives ``("file.npz", None)``.

    Only the text after the last ``:`` counts, and only when it looks like a
    ``/``-joined name, so ``gs://bucket/file.npz`` and ``C:\\w.npz`` stay whole.
    """
    head, sep, tail = spec.rpartition(":")
    if not sep or not head or tail.startswith("/") or "\\" in tail:
        return spec, None
    if not tail:
        raise ValueError(
            f"Empty subtree in {spec!r}: write 'file.npz:<subtree>' (as in 'file.npz:img') or drop the ':'."
        )
    if not _SUBTREE_RE.fullmatch(tail):
        return spec, None
    return head, tail.strip("/")


def _not_weights(path: str, why: str) -> ValueError:
    return ValueError(f"{path} is not a weights npz: {why}. Expected a numpy .npz archive of named arrays.")


def _recover_dtype(name: str, array: np.ndarray, path: str) -> np.ndarray:
    """bfloat16 saved by numpy comes back as 2-byte void; anything else void is unreadable."""
    if array.dtype.kind != "V":
        return array
    if array.dtype.itemsize == 2 and array.dtype.names is None:
        return array.view(_BF16)
    raise _not_weights(path, f"array {name!r} has dtype {array.dtype}, which is neither numeric nor bfloat16 (V2)")


def _top_prefixes(names: Iterable[str]) -> list[str]:
    """The first path component of each name, and the second one under a params wrapper."""
    found: set[str] = set()
    for name in names:
        parts = name.split("/")
        found.add(parts[0])
        for wrapper in WRAPPERS:
            depth = wrapper.count("/") + 1
            if "/".join(parts[:depth]) == wrapper and len(parts) > depth + 1:
                found.add("/".join(parts[: depth + 1]))
    return sorted(found)


def _select(names: list[str], subtree: str, path: str) -> tuple[str, list[str]]:
    """The prefix that ``subtree`` resolves to (possibly under ``params/``) and the names under it."""
    subtree = subtree.strip("/")
    if not subtree:
        raise ValueError("subtree must be a non-empty '/'-joined name such as 'img' or 'params/img'.")
    candidates = [subtree] + [f"{w}/{subtree}" for w in WRAPPERS if not subtree.startswith(w + "/")]
    for prefix in candidates:
        if prefix in names:
            raise ValueError(f"{path}: {prefix!r} is a single array, not a subtree; pick one of its parents.")
        chosen = [n for n in names if n.startswith(prefix + "/")]
        if chosen:
            return prefix, chosen
    raise ValueError(
        f"{path} has no subtree {subtree!r}; the top-level names in it are: {', '.join(_top_prefixes(names))}."
    )


def load_npz(path: str | os.PathLike[str], *, subtree: str | None = None) -> dict[str, np.ndarray]:
    """Reads a big_vision ``.npz`` into ``{"/"-joined name: array}``, bfloat16 restored.

    ``subtree`` (``"img"``, ``"params/img"``) keeps the names under that prefix and
    strips it; a subtree not found at the top level is also looked up under
    ``params/`` and ``opt/target/``, as big_vision does. ``path`` may also be a
    ``"file.npz:subtree"`` spec (see :func:`split_npz_path`).
    """
    path = os.fspath(path)
    if subtree is None and not os.path.exists(path):
        path, subtree = split_npz_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint file at {path!r}.")
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e):
            raise _not_weights(
                path, "it is neither an .npz nor an .npy file, and numpy would have to unpickle it (never done here)"
            ) from e
        raise _not_weights(path, f"numpy cannot read it ({e})") from e
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise _not_weights(path, f"it is truncated or corrupt ({type(e).__name__}: {e})") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _not_weights(path, f"it holds a single {type(archive).__name__} (a .npy file), not named arrays")

    with archive:
        names = list(archive.files)
        if subtree is None:
            prefix, wanted = "", names
        else:
            prefix, wanted = _select(names, subtree, path)
        out: dict[str, np.ndarray] = {}
        for name in wanted:
            try:
                array = archive[name]
            except ValueError as e:
                if "allow_pickle" in str(e) or "Object arrays" in str(e):
                    raise _not_weights(path, f"array {name!r} is an object (pickled) array") from e
                raise _not_weights(path, f"array {name!r} cannot be read ({e})") from e
            except (zipfile.BadZipFile, EOFError, OSError) as e:
                raise _not_weights(path, f"it is truncated or corrupt at {name!r} ({type(e).__name__}: {e})") from e
            key = name[len(prefix) + 1 :] if prefix else name
            out[key] = _recover_dtype(name, array, path)
    return out


def flat_leaves(params: Any) -> dict[str, Any]:
    """``/``-joined name -> leaf for a nested mapping, a flat one, or a mix; duplicates are an error."""
    out: dict[str, Any] = {}
    for name, leaf in flatten_with_names(params):
        if name in out:
            raise ValueError(f"Two leaves map to the same name {name!r}; the params mix nested and '/'-joined keys.")
        out[name] = leaf
    return out


def _to_storable(name: str, leaf: Any, dtype: np.dtype[Any] | None) -> np.ndarray:
    array = np.asarray(leaf)
    if dtype is not None and (np.issubdtype(array.dtype, np.floating) or array.dtype == _BF16):
        array = array.astype(dtype)
    if array.dtype == _BF16:
        return array.view(_VOID2)
    if array.dtype.kind not in "biufc":
        raise ValueError(
            f"Cannot store {name!r} of dtype {array.dtype} in a big_vision npz: only numeric numpy dtypes "
            "and bfloat16 can be stored."
        )
    return array


def save_npz(path: str | os.PathLike[str], params: Any, *, dtype: Any = None) -> None:
    """Writes nested (or flat ``/``-named) params as a big_vision ``.npz``, atomically.

    ``dtype`` (e.g. ``"bfloat16"``) casts the floating-point arrays; bfloat16 is
    stored as 2-byte void as big_vision does. The file is written under a
    temporary name in the same folder and renamed into place, so a failure never
    leaves a partial file (nor replaces an existing one).
    """
    path = os.fspath(path)
    target = np.dtype(dtype) if dtype is not None else None
    arrays = {name: _to_storable(name, leaf, target) for name, leaf in flat_leaves(params).items()}
    if not arrays:
        raise ValueError("Nothing to save: the params have no arrays.")
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy stubs type **kwds as bool

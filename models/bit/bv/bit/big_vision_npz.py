"""Map big_vision's BiT ``.npz`` layouts onto bv's BiT params, and infer the model from the arrays.

The files are read and written by ``bv.core.hub.npz``. Accepted layouts:

* v1 (``bit``): big_vision's names (``conv_root``, ``gn_root``, ``block{i}/unit{j}/...``, ``head``),
  possibly under ``params/`` or ``opt/target/`` (a training checkpoint); GroupNorm scale and bias of
  older checkpoints, stored as ``[1, 1, 1, C]``, are squeezed to ``[C]`` as big_vision does.
* v2 (``bit_paper``): big_vision's names (``root_block/conv_root``, ``block{i}/unit{jj}/...``,
  ``norm-pre-head``, ``head``), or the original BiT release (``BiT-M-R50x1.npz`` and friends:
  ``resnet/root_block/standardized_conv2d/kernel``, ``resnet/block1/unit01/a/group_norm/gamma``, ...),
  which is renamed here as big_vision's ``bit_paper.load`` does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from bv.bit.model import depth_name
from bv.core.hub.npz import WRAPPERS, flat_leaves
from bv.core.tree import unflatten

__all__ = ["infer_kwargs", "params_from_big_vision", "params_to_big_vision"]

_UNIT_RE = re.compile(r"^block(\d+)/unit(\d+)/")
_TF_CONV_RE = re.compile(r"/standardized_conv2d_\d+/")
_SHOW = 5
_GN_TF = {"gamma": "scale", "beta": "bias"}  # TF GroupNorm names -> flax


def _unwrap(flat: dict[str, Any]) -> dict[str, Any]:
    """The params of a training checkpoint (``params/...``, ``opt/target/...``), optimizer state dropped."""
    for wrapper in WRAPPERS:
        inner = {n[len(wrapper) + 1 :]: v for n, v in flat.items() if n.startswith(wrapper + "/")}
        if inner:
            return inner
    return flat


def _from_original_bit(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The original BiT release's TF names -> big_vision's ``bit_paper`` names."""
    flat = {_TF_CONV_RE.sub("/standardized_conv2d/", k): v for k, v in flat.items()}
    out: dict[str, np.ndarray] = {}
    for name, value in flat.items():
        rest = name[len("resnet/") :]
        if rest == "root_block/standardized_conv2d/kernel":
            out["root_block/conv_root/kernel"] = value
        elif rest.startswith("group_norm/"):
            out[f"norm-pre-head/{_GN_TF[rest.split('/')[-1]]}"] = value
        elif rest == "head/conv2d/kernel":
            out["head/kernel"] = value.reshape(value.shape[-2:])
        elif rest == "head/conv2d/bias":
            out["head/bias"] = value
        elif m := re.fullmatch(r"(block\d+/unit\d+)/a/proj/standardized_conv2d/kernel", rest):
            out[f"{m[1]}/conv_proj/kernel"] = value
        elif m := re.fullmatch(r"(block\d+/unit\d+)/([abc])/standardized_conv2d/kernel", rest):
            out[f"{m[1]}/conv{'abc'.index(m[2]) + 1}/kernel"] = value
        elif m := re.fullmatch(r"(block\d+/unit\d+)/([abc])/group_norm/(gamma|beta)", rest):
            out[f"{m[1]}/gn{'abc'.index(m[2]) + 1}/{_GN_TF[m[3]]}"] = value
        else:
            raise ValueError(f"Unexpected array {name!r} in an original BiT checkpoint (resnet/... names).")
    return out


def _check(flat: Mapping[str, Any], *, paper: bool) -> None:
    root = "root_block/conv_root/kernel" if paper else "conv_root/kernel"
    if root in flat and any(_UNIT_RE.match(n) for n in flat):
        return
    other = "conv_root/kernel" if paper else "root_block/conv_root/kernel"
    hint = ""
    if other in flat:
        hint = (
            " It holds a BiT v1 model ('bit'): load it with bv.bit.BiT."
            if paper
            else " It holds a BiT-paper v2 model ('bit_paper'): load it with bv.bit.BiTPaper."
        )
    names = ", ".join(sorted(flat)[:_SHOW])
    raise ValueError(
        f"Not a BiT {'v2 (bit_paper)' if paper else 'v1 (bit)'} checkpoint: expected {root!r} and "
        f"'block1/unit...' arrays, found {names}{', ...' if len(flat) > _SHOW else ''}.{hint}"
    )


def params_from_big_vision(flat: Mapping[str, Any], *, paper: bool) -> dict[str, Any]:
    """Nested bv params from a big_vision BiT checkpoint's arrays (v1 if not ``paper``; see the module docstring)."""
    arrays = _unwrap({k: np.asarray(v) for k, v in flat_leaves(dict(flat)).items()})
    if paper and any(n.startswith("resnet/") for n in arrays):
        arrays = _from_original_bit(arrays)
    _check(arrays, paper=paper)
    fixed: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        parts = name.split("/")
        is_norm = len(parts) >= 2 and (parts[-2].startswith("gn") or parts[-2] == "norm-pre-head")
        if is_norm and parts[-1] in ("scale", "bias"):
            channels = value.shape[-1]
            value = value.reshape((1, 1, 1, channels) if paper else (channels,))
        fixed[name] = value
    return unflatten(fixed)


def params_to_big_vision(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flat ``/``-named numpy arrays, as big_vision's ``.npz`` stores them (the names are the same)."""
    return {k: np.asarray(v) for k, v in flat_leaves(dict(params)).items()}


def infer_kwargs(params: Mapping[str, Any], *, paper: bool) -> dict[str, Any]:
    """``depth``, ``width`` and ``num_classes`` of the model that ``params`` (nested or flat) belong to."""
    flat = flat_leaves(dict(params))
    root = flat["root_block/conv_root/kernel" if paper else "conv_root/kernel"]
    units: dict[int, set[int]] = {}
    for name in flat:
        if m := _UNIT_RE.match(name):
            units.setdefault(int(m[1]), set()).add(int(m[2]))
    stages = sorted(units)
    if stages != list(range(1, len(stages) + 1)):
        raise ValueError(f"The checkpoint's stages are block{stages}; expected block1, block2, ... without gaps.")
    sizes = [len(units[s]) for s in stages]
    channels = int(np.shape(root)[-1])
    width: float = channels / 64
    kwargs: dict[str, Any] = {
        "depth": _jsonable(depth_name(sizes)),
        "width": int(width) if width.is_integer() else width,
    }
    head = flat.get("head/kernel")
    kwargs["num_classes"] = int(np.shape(head)[-1]) if head is not None else None
    return kwargs


def _jsonable(depth: int | tuple[int, ...]) -> int | list[int]:
    return depth if isinstance(depth, int) else list(depth)

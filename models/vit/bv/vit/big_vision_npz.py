"""Map the ViT layouts of big_vision's ``.npz`` checkpoints onto bv's ViT params, and back.

The files themselves are read and written by ``bv.core.hub.npz`` (re-exported
here as ``load_npz``, ``save_npz`` and ``split_npz_path``).

Published ViT checkpoints come in several layouts, all accepted by
:func:`vit_params_from_big_vision`:

* current big_vision (the names bv uses), possibly under ``params/`` (a training
  checkpoint) or ``opt/target/`` (an old flax-optimizer checkpoint);
* scan-stacked blocks, ``Transformer/encoderblock`` with a leading depth axis;
* the original vision_transformer / pre-2022 big_vision one: pre-linen module
  numbering (``MultiHeadDotProductAttention_1``, ``LayerNorm_2``, ``MlpBlock_3``),
  the position embedding under ``Transformer/posembed_input`` or ``Transformer``,
  with a first entry for the [cls] token (folded into ``cls`` here, which gives
  the same outputs since bv adds no posemb to [cls]);
* an inlined MAP head (``probe`` and its layers at the top level).

Two-tower (LiT, SigLIP) checkpoints keep the image tower under ``img/``: select
it with ``load_npz(path, subtree="img")`` or the ``"file.npz:img"`` form.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from bv.core.hub.npz import WRAPPERS, flat_leaves, load_npz, save_npz, split_npz_path
from bv.core.tree import flatten_with_names, unflatten
from bv.vit.model import scan_to_pyloop

__all__ = [
    "infer_vit_kwargs",
    "load_npz",
    "save_npz",
    "split_npz_path",
    "vit_params_from_big_vision",
    "vit_params_to_big_vision",
]

_BF16 = np.dtype(ml_dtypes.bfloat16)
_VOID2 = np.dtype("V2")
_PRE_LINEN_RE = re.compile(r"^(.*)_(\d+)$")
_BLOCK_RE = re.compile(r"^encoderblock_(\d+)$")
_SHOW = 5  # how many offending names an error lists


# --------------------------------------------------------------------------- ViT layouts


def _as_array(value: Any) -> np.ndarray:
    """A numpy array, with bfloat16 stored as 2-byte void (a raw ``np.load``) viewed back as bfloat16."""
    array = np.asarray(value)
    return array.view(_BF16) if array.dtype == _VOID2 else array


def _as_flat(params: Mapping[str, Any]) -> dict[str, Any]:
    """Accepts flat ``/``-joined names or nested mappings (a flax ``{"params": ...}`` wrapper included)."""
    if not isinstance(params, Mapping):
        raise TypeError(f"Expected a mapping of params, got {type(params).__name__}.")
    flat = flat_leaves(dict(params))
    if not flat:
        raise ValueError("The params are empty.")
    return flat


def _unwrap(flat: dict[str, Any]) -> dict[str, Any]:
    """Keeps the params of a training checkpoint (``params/...`` or ``opt/target/...``), dropping optimizer state."""
    for wrapper in WRAPPERS:
        inner = {n[len(wrapper) + 1 :]: v for n, v in flat.items() if n.startswith(wrapper + "/")}
        if inner and not any(n.startswith("Transformer/") for n in flat):
            return inner
    return flat


def _renumber_pre_linen(node: dict[str, Any], *, in_transformer: bool = False) -> dict[str, Any]:
    """Pre-linen flax numbered submodules across classes (``LayerNorm_0, ..._1, LayerNorm_2``);
    linen numbers each class from 0. Renumbers ``Name_k`` children per name in order of ``k``."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for key in node:
        m = _PRE_LINEN_RE.match(key)
        if m and isinstance(node[key], dict) and not (in_transformer and m.group(1) == "encoderblock"):
            groups.setdefault(m.group(1), []).append((int(m.group(2)), key))
    rename = {key: f"{base}_{i}" for base, items in groups.items() for i, (_, key) in enumerate(sorted(items))}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            value = _renumber_pre_linen(value, in_transformer=key == "Transformer")
        out[rename.get(key, key)] = value
    return out


def _move_posemb(tree: dict[str, Any]) -> bool:
    """Moves an old-layout posemb to the top; returns whether the layout was an old one."""
    transformer = tree.get("Transformer")
    if not isinstance(transformer, dict):
        return False
    old = None
    if "posembed_input" in transformer:
        holder = transformer.pop("posembed_input")
        if not isinstance(holder, dict) or set(holder) != {"pos_embedding"}:
            raise ValueError("Transformer/posembed_input should hold exactly 'pos_embedding'.")
        old = holder["pos_embedding"]
    if "pos_embedding" in transformer:
        if old is not None:
            raise ValueError("Both Transformer/posembed_input/pos_embedding and Transformer/pos_embedding found.")
        old = transformer.pop("pos_embedding")
    if old is None:
        return False
    if "pos_embedding" in tree:
        raise ValueError("Both a top-level pos_embedding and an old-layout one under Transformer found.")
    tree["pos_embedding"] = old
    return True


def _fold_cls_posemb(tree: dict[str, Any], old_layout: bool) -> None:
    """Old ViTs added the posemb after prepending [cls], so the posemb has one extra first entry.

    bv adds the posemb to the patches only, so that entry is added to ``cls``. In old
    layouts the extra entry is always there when ``cls`` is; for the current layout it
    is detected as big_vision does (a non-square count that is a square plus one).
    """
    if "cls" not in tree or "pos_embedding" not in tree:
        return
    pe = np.asarray(tree["pos_embedding"])
    if pe.ndim != 3:
        raise ValueError(f"pos_embedding should have shape [1, N, D], got {pe.shape}.")
    n = pe.shape[1]
    square = math.isqrt(n) ** 2 == n
    square_plus_one = n > 1 and math.isqrt(n - 1) ** 2 == n - 1
    if old_layout or (square_plus_one and not square):
        cls = np.asarray(tree["cls"])
        tree["cls"] = (cls + pe[:, :1]).astype(cls.dtype)
        tree["pos_embedding"] = pe[:, 1:]


def _leaf_names(prefix: str, kind: str) -> list[str]:
    if kind == "dense":
        return [f"{prefix}/kernel", f"{prefix}/bias"]
    if kind == "ln":
        return [f"{prefix}/scale", f"{prefix}/bias"]
    if kind == "mha":
        return [n for p in ("query", "key", "value", "out") for n in _leaf_names(f"{prefix}/{p}", "dense")]
    if kind == "mlp":
        return _leaf_names(f"{prefix}/Dense_0", "dense") + _leaf_names(f"{prefix}/Dense_1", "dense")
    raise AssertionError(kind)


def _block_names(prefix: str) -> list[str]:
    return (
        _leaf_names(f"{prefix}/LayerNorm_0", "ln")
        + _leaf_names(f"{prefix}/MultiHeadDotProductAttention_0", "mha")
        + _leaf_names(f"{prefix}/LayerNorm_1", "ln")
        + _leaf_names(f"{prefix}/MlpBlock_0", "mlp")
    )


def _show(names: Iterable[str]) -> str:
    ordered = sorted(names)
    more = f" (and {len(ordered) - _SHOW} more)" if len(ordered) > _SHOW else ""
    return ", ".join(ordered[:_SHOW]) + more


def _check_vit_names(names: set[str]) -> None:
    """Fails unless ``names`` are exactly a pyloop bv/big_vision ViT's (optional parts allowed)."""
    tops = {n.split("/")[0] for n in names}
    if "Transformer" not in tops and "img" in tops:
        raise ValueError(
            "These look like a two-tower (LiT/SigLIP) checkpoint: the ViT is under 'img/'. "
            "Load it with load_npz(path, subtree='img') or 'file.npz:img'."
        )
    depth = 0
    while any(n.startswith(f"Transformer/encoderblock_{depth}/") for n in names):
        depth += 1
    required = _leaf_names("embedding", "dense") + _leaf_names("Transformer/encoder_norm", "ln")
    for i in range(depth):
        required += _block_names(f"Transformer/encoderblock_{i}")
    optional = ["pos_embedding", "cls"] + _leaf_names("head", "dense") + _leaf_names("pre_logits", "dense")
    if any(n.startswith("MAPHead_0/") for n in names):
        required += (
            ["MAPHead_0/probe"]
            + _leaf_names("MAPHead_0/MultiHeadDotProductAttention_0", "mha")
            + _leaf_names("MAPHead_0/LayerNorm_0", "ln")
            + _leaf_names("MAPHead_0/MlpBlock_0", "mlp")
        )
    unknown = names - set(required) - set(optional)
    missing = set(required) - names
    problems = []
    if depth == 0:
        problems.append("no encoder blocks (Transformer/encoderblock_0/...)")
    if missing:
        problems.append(f"missing: {_show(missing)}")
    if unknown:
        problems.append(f"not part of a ViT: {_show(unknown)}")
    if problems:
        raise ValueError(
            "Not a ViT checkpoint in any supported big_vision layout; " + "; ".join(problems) + ". "
            "Supported: current big_vision names (optionally under params/ or opt/target/), scan-stacked "
            "Transformer/encoderblock, and the original vision_transformer layout."
        )


def vit_params_from_big_vision(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Turns a ViT checkpoint in any supported big_vision layout into bv's nested pyloop params.

    ``flat`` is what :func:`load_npz` returns (nested mappings are accepted too).
    Arrays keep their dtype; ``params/`` or ``opt/target/`` wrappers are removed and
    the optimizer state beside them dropped. Names that do not belong to a ViT are
    an error.
    """
    names = _unwrap(_as_flat(flat))
    tree = unflatten({name: _as_array(value) for name, value in names.items()})
    tree = _renumber_pre_linen(tree)
    old_layout = _move_posemb(tree)
    if "probe" in tree:  # a MAP head inlined at the top level (ViT-G development checkpoints)
        parts = ["probe", "MultiHeadDotProductAttention_0", "LayerNorm_0", "MlpBlock_0"]
        if "MAPHead_0" in tree:
            raise ValueError("Both an inlined MAP head ('probe' at the top level) and MAPHead_0 found.")
        tree["MAPHead_0"] = {k: tree.pop(k) for k in parts if k in tree}
    transformer = tree.get("Transformer")
    if isinstance(transformer, dict) and "encoderblock" in transformer:
        if any(_BLOCK_RE.match(k) for k in transformer):
            raise ValueError("Both a scan-stacked Transformer/encoderblock and Transformer/encoderblock_<i> found.")
        tree = scan_to_pyloop(tree)
    _fold_cls_posemb(tree, old_layout)
    _check_vit_names({name for name, _ in flatten_with_names(tree)})
    return tree


def vit_params_to_big_vision(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """bv ViT params (pyloop or scan layout) -> flat numpy arrays named as current big_vision names them.

    The blocks come out un-stacked (``encoderblock_{i}``), which big_vision's ViT
    loader stacks again for a scanned model.
    """
    flat = _as_flat(params)
    if all(n.startswith("params/") for n in flat):
        flat = {n[len("params/") :]: v for n, v in flat.items()}
    tree = unflatten(flat)
    if isinstance(tree.get("Transformer"), dict) and "encoderblock" in tree["Transformer"]:
        tree = scan_to_pyloop(tree)
    out = {name: np.asarray(leaf) for name, leaf in flatten_with_names(tree)}
    _check_vit_names(set(out))
    return out


def infer_vit_kwargs(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The ``create_model`` fields a checkpoint's array shapes imply (any supported layout).

    Returns width, depth, mlp_dim, num_heads, patch_size, pool_type, num_classes,
    posemb and rep_size. ``pool_type`` is ``"tok"`` with a ``cls`` token, ``"map"``
    with a MAP head and otherwise ``"gap"`` (``"0"``/``"none"`` leave no trace in
    the params); ``posemb`` is ``"sincos2d"`` when no learned one is stored.
    """
    tree = vit_params_from_big_vision(flat)
    ph, pw, _, width = np.shape(tree["embedding"]["kernel"])
    blocks = tree["Transformer"]
    depth = len([k for k in blocks if _BLOCK_RE.match(k)])
    block = blocks["encoderblock_0"]
    _, num_heads, head_dim = np.shape(block["MultiHeadDotProductAttention_0"]["query"]["kernel"])
    if num_heads * head_dim != width:
        raise ValueError(f"Query kernel of {num_heads} heads x {head_dim} does not match the width {width}.")
    if "cls" in tree:
        pool_type = "tok"
    elif "MAPHead_0" in tree:
        pool_type = "map"
    else:
        pool_type = "gap"
    head = tree.get("head")
    pre_logits = tree.get("pre_logits")
    return {
        "width": int(width),
        "depth": depth,
        "mlp_dim": int(np.shape(block["MlpBlock_0"]["Dense_0"]["kernel"])[-1]),
        "num_heads": int(num_heads),
        "patch_size": (int(ph), int(pw)),
        "pool_type": pool_type,
        "num_classes": int(np.shape(head["kernel"])[-1]) if head is not None else None,
        "posemb": "learn" if "pos_embedding" in tree else "sincos2d",
        "rep_size": int(np.shape(pre_logits["kernel"])[-1]) if pre_logits is not None else False,
    }

"""big_vision's Mixer ``.npz`` checkpoints <-> bv Mixer params, and the model sizes their shapes imply.

bv uses big_vision's names unchanged (those of the MLP-Mixer paper's checkpoints too), so
the mapping only removes a training checkpoint's ``params/`` or ``opt/target/`` wrapper and
checks that every name belongs to a Mixer. Files are read and written by ``bv.core.hub.npz``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from bv.core.hub.npz import WRAPPERS, flat_leaves
from bv.core.tree import unflatten

__all__ = ["infer_mixer_kwargs", "mixer_params_from_big_vision", "mixer_params_to_big_vision"]

_BLOCK_RE = re.compile(r"MixerBlock_(\d+)")
_NORM = ("scale", "bias")
_DENSE = ("kernel", "bias")
_SHOW = 5


def _unwrap(flat: dict[str, Any]) -> dict[str, Any]:
    """Keeps the params of a training checkpoint (``params/...``, ``opt/target/...``), dropping optimizer state."""
    if any(n.startswith("stem/") for n in flat):
        return flat
    for wrapper in WRAPPERS:
        inner = {n[len(wrapper) + 1 :]: v for n, v in flat.items() if n.startswith(wrapper + "/")}
        if inner:
            return inner
    return flat


def _expected_names(depth: int, with_head: bool) -> set[str]:
    names = {f"stem/{k}" for k in _DENSE} | {f"pre_head_layer_norm/{k}" for k in _NORM}
    if with_head:
        names |= {f"head/{k}" for k in _DENSE}
    for i in range(depth):
        pre = f"MixerBlock_{i}"
        names |= {f"{pre}/LayerNorm_{j}/{k}" for j in (0, 1) for k in _NORM}
        names |= {
            f"{pre}/{mlp}/Dense_{j}/{k}" for mlp in ("token_mixing", "channel_mixing") for j in (0, 1) for k in _DENSE
        }
    return names


def _check_names(names: set[str]) -> int:
    """The number of blocks; raises if ``names`` are not exactly a Mixer's."""
    blocks = {int(m[1]) for n in names if (m := _BLOCK_RE.fullmatch(n.split("/")[0]))}
    depth = max(blocks) + 1 if blocks else 0
    expected = _expected_names(depth, with_head=any(n.startswith("head/") for n in names))
    missing, unknown = sorted(expected - names), sorted(names - expected)
    if depth == 0 or missing or unknown:
        parts = []
        if depth == 0:
            parts.append("no MixerBlock_<i>")
        if missing:
            parts.append(f"missing {', '.join(missing[:_SHOW])}" + (" ..." if len(missing) > _SHOW else ""))
        if unknown:
            parts.append(f"unexpected {', '.join(unknown[:_SHOW])}" + (" ..." if len(unknown) > _SHOW else ""))
        raise ValueError(
            f"Not MLP-Mixer params ({'; '.join(parts)}). Expected big_vision's names: stem, MixerBlock_<i>/"
            "{LayerNorm_0,token_mixing,LayerNorm_1,channel_mixing}, pre_head_layer_norm and optionally head."
        )
    return depth


def mixer_params_from_big_vision(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A big_vision Mixer checkpoint (flat ``/``-joined names or nested) -> nested bv params, dtypes kept."""
    names = _unwrap(flat_leaves(dict(flat)))
    _check_names(set(names))
    return unflatten({n: np.asarray(v) for n, v in names.items()})


def mixer_params_to_big_vision(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """bv Mixer params -> flat numpy arrays named as big_vision names them."""
    out = {n: np.asarray(v) for n, v in flat_leaves(dict(params)).items()}
    _check_names(set(out))
    return out


def infer_mixer_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``create_model`` fields nested Mixer params imply, plus ``num_classes``, ``resolution`` and ``channels``.

    ``resolution`` is the side of the square image whose patch grid has as many tokens as the
    token-mixing MLP takes (a Mixer is tied to its token count, hence its resolution).
    """
    flat = flat_leaves(dict(params))
    depth = _check_names(set(flat))
    ph, pw, channels, hidden = np.shape(flat["stem/kernel"])
    seq_len, tokens = np.shape(flat["MixerBlock_0/token_mixing/Dense_0/kernel"])
    side = math.isqrt(int(seq_len))
    if side * side != seq_len or ph != pw:
        raise ValueError(
            f"The Mixer takes {seq_len} tokens of {ph}x{pw} patches: bv models take square images, so the token "
            "count must be a square number and the patches square."
        )
    head = flat.get("head/kernel")
    return {
        "hidden_dim": int(hidden),
        "num_blocks": depth,
        "tokens_mlp_dim": int(tokens),
        "channels_mlp_dim": int(np.shape(flat["MixerBlock_0/channel_mixing/Dense_0/kernel"])[1]),
        "patch_size": (int(ph), int(pw)),
        "num_classes": int(np.shape(head)[1]) if head is not None else None,
        "resolution": side * int(ph),
        "channels": int(channels),
    }

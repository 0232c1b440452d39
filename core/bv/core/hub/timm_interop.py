"""Pieces every timm conversion shares: state-dict reading, Dense/LayerNorm/MLP layouts, timm configs and folders.

Nothing here imports torch or timm, so the model packages convert weights
without them. A Flax ``Dense`` kernel is ``[in, out]`` and a torch ``Linear`` weight is
``[out, in]``; a Flax ``LayerNorm`` has ``scale``/``bias`` where torch has ``weight``/``bias``;
a big_vision MLP block holds ``Dense_0``/``Dense_1`` where timm's ``Mlp`` holds ``fc1``/``fc2``.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np
import safetensors.numpy

from bv.core.hub.config import ConfigFormatError, HubConfig
from bv.core.hub.weights import WEIGHTS_FILE

# Resize methods of bv's ``resize_small`` that match timm's interpolation names.
_RESIZE_METHODS = ("bilinear", "bicubic", "nearest", "area")


def f32(x: Any) -> np.ndarray:
    """``x`` (a numpy, jax or torch-converted array) as float32 numpy."""
    return np.asarray(x, dtype=np.float32)


class TimmStateDict:
    """A timm state dict that remembers which entries were read, so that leftovers can be reported.

    ``model`` names the timm class the dict should come from (e.g. ``"VisionTransformer"``),
    for the error raised when an entry is missing.
    """

    def __init__(self, state_dict: Mapping[str, Any], model: str) -> None:
        self._sd = dict(state_dict)
        self._model = model
        self.unused = set(self._sd)

    def __contains__(self, name: str) -> bool:
        return name in self._sd

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._sd:
            raise ValueError(f"The timm state dict has no {name!r}: not a plain timm {self._model}.")
        self.unused.discard(name)
        return f32(self._sd[name])


# --------------------------------------------------------------------------- bv -> timm


def linear_to_timm(dense: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of a torch ``Linear`` from a Flax ``Dense``."""
    return f32(dense["kernel"]).T.copy(), f32(dense["bias"])


def norm_to_timm(out: dict[str, np.ndarray], prefix: str, ln: Mapping[str, Any]) -> None:
    """Writes a Flax ``LayerNorm`` as ``{prefix}.weight`` and ``{prefix}.bias`` into ``out``."""
    out[f"{prefix}.weight"] = f32(ln["scale"])
    out[f"{prefix}.bias"] = f32(ln["bias"])


def mlp_to_timm(out: dict[str, np.ndarray], prefix: str, mlp: Mapping[str, Any]) -> None:
    """Writes a big_vision MLP block (``Dense_0``, ``Dense_1``) as timm's ``{prefix}.fc1``/``fc2`` into ``out``."""
    out[f"{prefix}.fc1.weight"], out[f"{prefix}.fc1.bias"] = linear_to_timm(mlp["Dense_0"])
    out[f"{prefix}.fc2.weight"], out[f"{prefix}.fc2.bias"] = linear_to_timm(mlp["Dense_1"])


# --------------------------------------------------------------------------- timm -> bv


def linear_from_timm(sd: TimmStateDict, prefix: str) -> dict[str, np.ndarray]:
    """A Flax ``Dense`` from torch's ``{prefix}.weight``/``bias``."""
    return {"kernel": sd[f"{prefix}.weight"].T.copy(), "bias": sd[f"{prefix}.bias"]}


def norm_from_timm(sd: TimmStateDict, prefix: str) -> dict[str, np.ndarray]:
    """A Flax ``LayerNorm`` from torch's ``{prefix}.weight``/``bias``."""
    return {"scale": sd[f"{prefix}.weight"], "bias": sd[f"{prefix}.bias"]}


def mlp_from_timm(sd: TimmStateDict, prefix: str) -> dict[str, Any]:
    """A big_vision MLP block from timm's ``{prefix}.fc1``/``fc2``."""
    return {"Dense_0": linear_from_timm(sd, f"{prefix}.fc1"), "Dense_1": linear_from_timm(sd, f"{prefix}.fc2")}


# --------------------------------------------------------------------------- timm configs


def pair(x: Any) -> tuple[int, int]:
    """``16`` or ``(16, 16)`` as an (h, w) pair of ints."""
    if isinstance(x, (int, np.integer)):
        return int(x), int(x)
    h, w = x
    return int(h), int(w)


def mlp_ratio(width: int, mlp_dim: int) -> float:
    """A float ratio for which timm's ``int(width * ratio)`` is exactly ``mlp_dim``."""
    ratio = mlp_dim / width
    for _ in range(4):
        if int(width * ratio) == mlp_dim:
            return ratio
        ratio = math.nextafter(ratio, math.inf)
    raise ValueError(f"No float mlp_ratio gives a timm MLP width of {mlp_dim} at width {width}.")


def pretrained_cfg(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    """The preprocessing part of a timm ``config.json``: Hub configs nest it, legacy ones keep it at the top."""
    pcfg = cfg.get("pretrained_cfg")
    if pcfg is None:
        pcfg = cfg
    if not isinstance(pcfg, Mapping):
        raise ValueError(f"pretrained_cfg in the timm config is a {type(pcfg).__name__}, expected a mapping.")
    return pcfg


def eval_pp(pre: Mapping[str, Any], resolution: int) -> str:
    """The bv pp string of timm's eval preprocessing: resize the short side, centre-crop, normalise.

    ``pre`` holds ``crop_pct``, ``interpolation``, ``mean`` and ``std`` (of 0..1 RGB), as the
    packages' ``timm_preprocessing`` give them. timm resizes the short side to
    ``floor(resolution / crop_pct)``.
    """
    pct = float(pre.get("crop_pct") or 0.875)
    small = int(math.floor(resolution / pct))
    method = str(pre.get("interpolation", "bicubic"))
    method = method if method in _RESIZE_METHODS else "bilinear"
    mean = tuple(round(float(m) * 255, 4) for m in pre.get("mean", (0.5, 0.5, 0.5)))
    std = tuple(round(float(s) * 255, 4) for s in pre.get("std", (0.5, 0.5, 0.5)))
    if all(m == 127.5 for m in mean) and all(s == 127.5 for s in std):
        norm = "value_range(-1, 1)"
    else:
        norm = f"vgg_value_range(mean={mean}, std={std})"
    return f"decode|resize_small({small}, method='{method}')|central_crop({resolution})|{norm}"


def crop_pct(pp: str, resolution: int) -> float:
    """timm's ``crop_pct`` of a bv eval pp (``resize_small(S)|...|central_crop(R)``), else timm's 0.875."""
    m = re.search(r"resize_small\((\d+)", pp)
    if m and f"central_crop({resolution})" in pp:
        return round(resolution / int(m[1]), 4)
    return 0.875


# --------------------------------------------------------------------------- timm folders


def hub_config_from_timm(
    model_name: str, kwargs: dict[str, Any], timm_config: Mapping[str, Any], preprocessing: Mapping[str, Any]
) -> HubConfig:
    """The bv ``HubConfig`` of a timm folder, from the model kwargs a package read out of its ``config.json``.

    Pops ``image_size``, ``num_classes`` and ``channels`` (default 3) from ``kwargs``; the rest
    are the model's fields. ``preprocessing`` is the package's ``timm_preprocessing`` of the config.
    """
    height, width = kwargs.pop("image_size")
    if height != width:
        raise ConfigFormatError(f"bv models take square images; this timm model takes {height}x{width}.")
    num_classes = kwargs.pop("num_classes", None)
    channels = kwargs.pop("channels", 3)
    labels = timm_config.get("label_names") or (timm_config.get("pretrained_cfg") or {}).get("label_names")
    return HubConfig(
        model_name=model_name,
        model=kwargs,
        num_classes=num_classes or None,
        resolution=int(height),
        channels=channels,
        pp=eval_pp(preprocessing, int(height)),
        labels=list(labels) if labels else None,
        extra={"converted_from": f"timm {timm_config.get('architecture')}"},
    )


def write_timm_folder(
    folder: str, config: dict[str, Any], state: Mapping[str, np.ndarray], labels: Sequence[str] | None = None
) -> None:
    """Writes ``config.json`` (with ``label_names`` when given) and ``model.safetensors`` as timm reads a folder.

    Both files are written into a temporary folder inside ``folder`` and moved in only when complete.
    """
    if labels:
        config = {**config, "label_names": list(labels)}
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bv-save-", dir=folder) as tmp:
        arrays = {k: np.ascontiguousarray(v) for k, v in state.items()}
        safetensors.numpy.save_file(arrays, os.path.join(tmp, WEIGHTS_FILE))
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        for name in (WEIGHTS_FILE, "config.json"):
            os.replace(os.path.join(tmp, name), os.path.join(folder, name))

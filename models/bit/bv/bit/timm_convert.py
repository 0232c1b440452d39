"""Convert BiT-paper (ResNet v2) weights between bv (big_vision names, flax layouts) and timm (PyTorch).

Pure numpy: neither torch nor timm is imported. A timm state dict is a mapping from timm's
names to numpy arrays (``safetensors.numpy.load_file`` on a timm Hub folder).

What maps onto what (timm's ``ResNetV2`` as its ``resnetv2_{50,101,152}x{w}_bit`` factories build it):

* ``root_block/conv_root`` (HWIO) <-> ``stem.conv`` (OIHW);
* ``block{i+1}/unit{j+1:02d}`` <-> ``stages.{i}.blocks.{j}``: ``gn{k}`` <-> ``norm{k}``
  (``[1, 1, 1, C]`` <-> ``[C]``), ``conv{k}`` <-> ``conv{k}``, ``conv_proj`` <-> ``downsample.conv``;
* ``norm-pre-head`` <-> ``norm``; ``head`` (Dense ``[C, N]``) <-> ``head.fc`` (a 1x1 conv ``[N, C, 1, 1]``).

The two compute the same function when the bv model has ``ws_eps=1e-8`` (timm's ``StdConv2d``
epsilon for BiT) and ``root_pool_pad="zero"`` (timm's "fixed" BiT stem zero-pads before its
max-pool); :func:`bit_kwargs_from_timm_config` sets both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from bv.bit.model import BLOCK_SIZES, block_sizes, depth_name
from bv.core.hub.timm_interop import f32, pretrained_cfg

__all__ = [
    "TIMM_ARCHITECTURES",
    "TIMM_WS_EPS",
    "bit_kwargs_from_timm_config",
    "params_to_timm",
    "timm_model_args",
    "timm_preprocessing",
    "timm_to_params",
]

TIMM_WS_EPS = 1e-8  # timm builds its BiT models with StdConv2d(eps=1e-8)
# (depth, width) -> the timm architecture registered for it.
TIMM_ARCHITECTURES: dict[tuple[int, int], str] = {
    (d, w): f"resnetv2_{d}x{w}_bit" for d, w in ((50, 1), (50, 3), (101, 1), (101, 3), (152, 2), (152, 4))
}
_ARCH_RE = re.compile(r"resnetv2_(?P<depth>\d+)x(?P<width>\d+)_bit")
_BLOCK_RE = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.")
# ResNetV2 arguments a timm config may carry, and the values bv can represent (None: any value).
_ARG_VALUES: dict[str, tuple[Any, ...] | None] = {
    "num_classes": None,
    "in_chans": None,
    "global_pool": ("avg",),
    "output_stride": (32,),
    "drop_rate": None,  # training only
    "drop_path_rate": None,  # training only
}


def _conv_to_timm(kernel: Any) -> np.ndarray:
    return np.ascontiguousarray(f32(kernel).transpose(3, 2, 0, 1))  # HWIO -> OIHW


def _conv_from_timm(weight: Any) -> np.ndarray:
    return np.ascontiguousarray(f32(weight).transpose(2, 3, 1, 0))  # OIHW -> HWIO


# --------------------------------------------------------------------------- bv -> timm


def params_to_timm(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """bv ``bit_paper`` params (nested, as the model holds them) -> a timm ``ResNetV2`` state dict."""
    out: dict[str, np.ndarray] = {"stem.conv.weight": _conv_to_timm(params["root_block"]["conv_root"]["kernel"])}
    stages = sorted((k for k in params if re.fullmatch(r"block\d+", k)), key=lambda k: int(k[5:]))
    for i, stage in enumerate(stages):
        if stage != f"block{i + 1}":
            raise ValueError(f"Expected stages block1..block{len(stages)}, found {stages}.")
        units = sorted(params[stage], key=lambda k: int(k[4:]))
        for j, unit in enumerate(units):
            p, prefix = params[stage][unit], f"stages.{i}.blocks.{j}"
            for k in (1, 2, 3):
                out[f"{prefix}.norm{k}.weight"] = f32(p[f"gn{k}"]["scale"]).reshape(-1)
                out[f"{prefix}.norm{k}.bias"] = f32(p[f"gn{k}"]["bias"]).reshape(-1)
                out[f"{prefix}.conv{k}.weight"] = _conv_to_timm(p[f"conv{k}"]["kernel"])
            if "conv_proj" in p:
                out[f"{prefix}.downsample.conv.weight"] = _conv_to_timm(p["conv_proj"]["kernel"])
            elif j == 0:
                raise ValueError(
                    f"{stage}/{unit} has no conv_proj; timm's ResNetV2 projects in every stage's first unit."
                )
    out["norm.weight"] = f32(params["norm-pre-head"]["scale"]).reshape(-1)
    out["norm.bias"] = f32(params["norm-pre-head"]["bias"]).reshape(-1)
    if "head" in params:
        kernel = f32(params["head"]["kernel"])
        out["head.fc.weight"] = np.ascontiguousarray(kernel.T[:, :, None, None])
        out["head.fc.bias"] = f32(params["head"]["bias"])
    return out


def timm_model_args(model_kwargs: Mapping[str, Any], *, exact: bool = True) -> tuple[str, dict[str, Any]]:
    """bv ``bit_paper`` kwargs -> ``(timm architecture, timm.create_model kwargs)``.

    timm registers BiT models for (depth, width) in {(50, 1), (50, 3), (101, 1), (101, 3), (152, 2),
    (152, 4)} and fixes their stem and epsilon; with ``exact`` a model whose ``ws_eps`` or
    ``root_pool_pad`` differs from timm's (big_vision's defaults do) is refused, since timm would
    compute something slightly different from the same weights.
    """
    sizes = block_sizes(model_kwargs.get("depth", 50))
    width = float(model_kwargs.get("width", 1))
    depth = depth_name(sizes)
    arch = TIMM_ARCHITECTURES.get((depth, int(width))) if isinstance(depth, int) and width.is_integer() else None
    if arch is None:
        known = ", ".join(f"depth={d} width={w}" for d, w in TIMM_ARCHITECTURES)
        raise ValueError(
            f"timm has no BiT architecture for depth={model_kwargs.get('depth', 50)} width={width:g}; it has: {known}."
        )
    if exact:
        eps, pad = float(model_kwargs.get("ws_eps", 1e-10)), model_kwargs.get("root_pool_pad", "-inf")
        if not math.isclose(eps, TIMM_WS_EPS, rel_tol=1e-6) or pad != "zero":
            raise ValueError(
                f"This model has ws_eps={eps:g} and root_pool_pad={pad!r}; timm's BiT models compute with "
                f"ws_eps={TIMM_WS_EPS:g} and root_pool_pad='zero'. Load the model with those overrides (e.g. "
                "BiTPaper.from_pretrained(path, ws_eps=1e-8, root_pool_pad='zero')), or export with exact=False "
                "to accept slightly different outputs in timm."
            )
    create_kwargs: dict[str, Any] = {"num_classes": int(model_kwargs.get("num_classes") or 0)}
    return arch, create_kwargs


# --------------------------------------------------------------------------- timm -> bv


def timm_to_params(state: Mapping[str, Any]) -> dict[str, Any]:
    """A timm ``ResNetV2`` (BiT) state dict -> nested bv ``bit_paper`` params."""
    missing = [k for k in ("stem.conv.weight", "norm.weight", "norm.bias") if k not in state]
    if missing:
        raise ValueError(f"Not a timm ResNetV2 state dict: {', '.join(missing)} missing.")
    params: dict[str, Any] = {"root_block": {"conv_root": {"kernel": _conv_from_timm(state["stem.conv.weight"])}}}
    used = {"stem.conv.weight", "norm.weight", "norm.bias"}
    for i, j in _blocks(state):
        prefix, unit = f"stages.{i}.blocks.{j}", {}
        for k in (1, 2, 3):
            names = (f"{prefix}.norm{k}.weight", f"{prefix}.norm{k}.bias", f"{prefix}.conv{k}.weight")
            scale, bias, conv = (state[n] for n in names)
            used.update(names)
            unit[f"gn{k}"] = {"scale": f32(scale).reshape(1, 1, 1, -1), "bias": f32(bias).reshape(1, 1, 1, -1)}
            unit[f"conv{k}"] = {"kernel": _conv_from_timm(conv)}
        if f"{prefix}.downsample.conv.weight" in state:
            used.add(f"{prefix}.downsample.conv.weight")
            unit["conv_proj"] = {"kernel": _conv_from_timm(state[f"{prefix}.downsample.conv.weight"])}
        params.setdefault(f"block{i + 1}", {})[f"unit{j + 1:02d}"] = unit
    params["norm-pre-head"] = {
        "scale": f32(state["norm.weight"]).reshape(1, 1, 1, -1),
        "bias": f32(state["norm.bias"]).reshape(1, 1, 1, -1),
    }
    if "head.fc.weight" in state:
        weight = f32(state["head.fc.weight"])
        params["head"] = {
            "kernel": np.ascontiguousarray(weight.reshape(weight.shape[:2]).T),
            "bias": f32(state["head.fc.bias"]),
        }
        used.update({"head.fc.weight", "head.fc.bias"})
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"timm weights with no counterpart in bv's BiT: {', '.join(unused[:5])}.")
    return params


def _blocks(state: Mapping[str, Any]) -> list[tuple[int, int]]:
    found = sorted({(int(m[1]), int(m[2])) for k in state if (m := _BLOCK_RE.match(k))})
    return found


def timm_block_sizes(state: Mapping[str, Any]) -> tuple[int, ...]:
    """Units per stage of a timm ResNetV2 state dict."""
    counts: dict[int, int] = {}
    for i, _ in _blocks(state):
        counts[i] = counts.get(i, 0) + 1
    return tuple(counts[i] for i in sorted(counts))


def bit_kwargs_from_timm_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A timm Hub ``config.json`` (``resnetv2_{D}x{W}_bit``) -> bv ``bit_paper`` kwargs.

    Returns ``depth``, ``width``, ``ws_eps`` and ``root_pool_pad`` (so bv computes what timm does),
    ``num_classes``, and ``image_size`` and ``channels`` (not ``create_paper_model`` arguments: pop them).
    """
    if "architecture" not in cfg:
        raise ValueError(f"Not a timm config: no 'architecture' among {sorted(cfg)}.")
    arch = str(cfg["architecture"])
    m = _ARCH_RE.fullmatch(arch)
    if m is None or int(m["depth"]) not in BLOCK_SIZES:
        raise ValueError(
            f"timm architecture {arch!r} is not a BiT ResNet v2 bv can load; expected resnetv2_{{D}}x{{W}}_bit "
            f"with D in {', '.join(map(str, BLOCK_SIZES))} (timm has {', '.join(TIMM_ARCHITECTURES.values())})."
        )
    model_args = dict(cfg.get("model_args") or {})
    for key, value in model_args.items():
        if key not in _ARG_VALUES:
            raise ValueError(
                f"timm model_args {key}={value!r} ({arch}) has no counterpart in bv's BiT; "
                f"supported model_args: {', '.join(_ARG_VALUES)}."
            )
        allowed = _ARG_VALUES[key]
        if allowed is not None and value not in allowed:
            raise ValueError(
                f"timm model_args {key}={value!r} ({arch}) cannot be represented in bv's BiT; "
                f"supported values: {', '.join(map(repr, allowed))}."
            )
    pre = timm_preprocessing(cfg)
    num_classes = cfg.get("num_classes", model_args.get("num_classes", pretrained_cfg(cfg).get("num_classes", 1000)))
    return {
        "depth": int(m["depth"]),
        "width": int(m["width"]),
        "ws_eps": TIMM_WS_EPS,
        "root_pool_pad": "zero",
        "num_classes": int(num_classes),
        "image_size": pre["image_size"],
        "channels": int(model_args.get("in_chans", 3)),
    }


def timm_preprocessing(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The eval preprocessing of a timm config: ``image_size`` (h, w), ``mean``, ``std`` (of 0..1 RGB),
    ``crop_pct`` and ``interpolation``, with timm's BiT defaults for missing entries."""
    pcfg = pretrained_cfg(cfg)
    size = pcfg.get("input_size") or (3, 224, 224)
    return {
        "image_size": (int(size[-2]), int(size[-1])),
        "mean": tuple(float(x) for x in pcfg.get("mean", (0.5, 0.5, 0.5))),
        "std": tuple(float(x) for x in pcfg.get("std", (0.5, 0.5, 0.5))),
        "crop_pct": float(pcfg.get("crop_pct") or 0.875),
        "interpolation": str(pcfg.get("interpolation", "bilinear")),
    }

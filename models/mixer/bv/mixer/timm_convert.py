"""Convert MLP-Mixer weights between bv (big_vision parameter names, flax layouts) and timm (PyTorch).

Pure numpy: neither torch nor timm is imported. A timm state dict is a mapping from timm's
names to numpy arrays (``{k: v.numpy() for k, v in model.state_dict().items()}``, or
``safetensors.numpy.load_file`` on a timm Hub folder).

What maps onto what (timm's ``MlpMixer``):

* ``stem`` (Conv, HWIO kernel) <-> ``stem.proj`` (OIHW); both flatten the patch grid row by row;
* ``MixerBlock_{i}/LayerNorm_0`` <-> ``blocks.{i}.norm1``; ``token_mixing/Dense_{0,1}`` <->
  ``blocks.{i}.mlp_tokens.fc{1,2}``; ``LayerNorm_1`` <-> ``norm2``; ``channel_mixing`` <->
  ``mlp_channels`` (flax kernels are the transposed torch Linear weights);
* ``pre_head_layer_norm`` <-> ``norm``; ``head`` <-> ``head``.

Both use LayerNorm with epsilon 1e-6 and mean-pool the tokens after the final norm. The
activation differs: big_vision's Mixer uses the tanh approximation of GELU, timm's the exact
(erf) one. The Mixer's ``approximate_gelu`` field picks one; timm configs select the exact
GELU (set ``approximate_gelu=False``, as :func:`mixer_kwargs_from_timm_config` does). timm's
``MlpMixer`` takes its activation as a class, so a config.json cannot ask it for the tanh GELU:
:func:`timm_mixer_args` then names it (``act_layer="gelu_tanh"``) and the caller resolves it
with ``timm.layers.get_act_layer``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from bv.core.hub.timm_interop import (
    TimmStateDict,
    f32,
    linear_from_timm,
    linear_to_timm,
    mlp_from_timm,
    mlp_ratio,
    mlp_to_timm,
    norm_from_timm,
    norm_to_timm,
    pair,
    pretrained_cfg,
)
from bv.mixer.model import VARIANTS, decode_variant

__all__ = [
    "mixer_kwargs_from_timm_config",
    "params_to_timm",
    "timm_mixer_args",
    "timm_model_args",
    "timm_preprocessing",
    "timm_to_params",
]

# timm's registered Mixers: mixer_{s,b,l}{16,32}_224, optionally with a pretrained tag (".goog_in21k").
_ARCH_RE = re.compile(r"mixer_(?P<size>[sbl])(?P<patch>16|32)_(?P<res>\d+)")
_TIMM_SIZES = {"s": "S", "b": "B", "l": "L"}
_SUPPORTED = "mixer_{s,b,l}{16,32}_224 (with or without a pretrained tag such as '.goog_in21k')"

# MlpMixer arguments a timm config may set, and the values bv can represent (None: any value).
_ARG_VALUES: dict[str, tuple[Any, ...] | None] = {
    "img_size": None,
    "patch_size": None,
    "num_blocks": None,
    "embed_dim": None,
    "mlp_ratio": None,
    "num_classes": None,
    "in_chans": None,
    "global_pool": ("avg",),
    "act_layer": (None, "gelu", "gelu_tanh"),
    "stem_norm": (False,),
    "nlhb": None,  # initialisation only
}


# --------------------------------------------------------------------------- bv -> timm


def _num_blocks(params: Mapping[str, Any]) -> int:
    depth = len([k for k in params if re.fullmatch(r"MixerBlock_\d+", k)])
    if depth == 0 or any(f"MixerBlock_{i}" not in params for i in range(depth)):
        raise ValueError(f"Expected MixerBlock_0..N-1 in the Mixer params, found {sorted(params)}.")
    return depth


def params_to_timm(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """bv Mixer params (nested) -> a timm ``MlpMixer`` state dict of float32 numpy arrays.

    Build the timm model with :func:`timm_model_args` and load with
    ``model.load_state_dict({k: torch.from_numpy(v) ...}, strict=True)``.
    """
    params = dict(params)
    if "stem" not in params or "pre_head_layer_norm" not in params:
        raise ValueError(f"Not bv Mixer params: expected 'stem' and 'pre_head_layer_norm' among {sorted(params)}.")
    out: dict[str, np.ndarray] = {}
    kernel = f32(params["stem"]["kernel"])  # [ph, pw, in, D]
    out["stem.proj.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
    out["stem.proj.bias"] = f32(params["stem"]["bias"])
    for i in range(_num_blocks(params)):
        block, pre = params[f"MixerBlock_{i}"], f"blocks.{i}"
        norm_to_timm(out, f"{pre}.norm1", block["LayerNorm_0"])
        mlp_to_timm(out, f"{pre}.mlp_tokens", block["token_mixing"])
        norm_to_timm(out, f"{pre}.norm2", block["LayerNorm_1"])
        mlp_to_timm(out, f"{pre}.mlp_channels", block["channel_mixing"])
    norm_to_timm(out, "norm", params["pre_head_layer_norm"])
    if "head" in params:
        out["head.weight"], out["head.bias"] = linear_to_timm(params["head"])
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


# --------------------------------------------------------------------------- timm -> bv


def timm_to_params(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A timm ``MlpMixer`` state dict (numpy or anything ``np.asarray`` takes) -> nested float32 bv Mixer params.

    Other timm models of the same file (ResMLP, gMLP, GLU-Mixer) and a normalised stem
    (``stem_norm=True``) have parts bv's Mixer does not: they raise ``ValueError``.
    """
    sd = TimmStateDict(state_dict, "MlpMixer")
    if "stem.norm.weight" in sd:
        raise ValueError("This timm Mixer normalises its stem (stem_norm=True); bv's Mixer has no such part.")
    if "stem.proj.weight" not in sd or "blocks.0.mlp_tokens.fc1.weight" not in sd:
        raise ValueError(
            "Not a timm MlpMixer state dict: expected 'stem.proj.weight' and 'blocks.0.mlp_tokens.fc1.weight' "
            "(ResMLP, gMLP and other MLP models of timm are not MLP-Mixers)."
        )
    kernel = sd["stem.proj.weight"]  # [D, in, ph, pw]
    params: dict[str, Any] = {
        "stem": {"kernel": np.ascontiguousarray(kernel.transpose(2, 3, 1, 0)), "bias": sd["stem.proj.bias"]}
    }
    depth = len({k.split(".")[1] for k in sd.unused if k.startswith("blocks.")})
    for i in range(depth):
        pre = f"blocks.{i}"
        params[f"MixerBlock_{i}"] = {
            "LayerNorm_0": norm_from_timm(sd, f"{pre}.norm1"),
            "token_mixing": mlp_from_timm(sd, f"{pre}.mlp_tokens"),
            "LayerNorm_1": norm_from_timm(sd, f"{pre}.norm2"),
            "channel_mixing": mlp_from_timm(sd, f"{pre}.mlp_channels"),
        }
    params["pre_head_layer_norm"] = norm_from_timm(sd, "norm")
    if "head.weight" in sd:
        params["head"] = linear_from_timm(sd, "head")
    if sd.unused:
        raise ValueError(
            f"The timm state dict has entries a plain MlpMixer does not: {sorted(sd.unused)[:8]}; bv's Mixer "
            "cannot represent that model."
        )
    width = kernel.shape[0]
    for i in range(depth):
        hidden = params[f"MixerBlock_{i}"]["channel_mixing"]["Dense_0"]["kernel"].shape
        back = params[f"MixerBlock_{i}"]["channel_mixing"]["Dense_1"]["kernel"].shape
        if hidden[0] != width or back != (hidden[1], width):
            raise ValueError(
                f"blocks.{i}.mlp_channels maps {hidden[0]} -> {hidden[1]} -> {back[1]} features for width {width}: "
                "a gated MLP (GLU-Mixer), which bv's Mixer cannot represent."
            )
    return params


# --------------------------------------------------------------------------- architectures and configs


def timm_mixer_args(
    model_kwargs: Mapping[str, Any], *, image_size: int | tuple[int, int], channels: int = 3
) -> dict[str, Any]:
    """bv Mixer kwargs (as given to ``bv.mixer.create_model``) -> the arguments of timm's ``MlpMixer`` class.

    ``model_kwargs`` may hold ``variant`` (``"B/16"``) and the fields ``hidden_dim``, ``num_blocks``,
    ``tokens_mlp_dim``, ``channels_mlp_dim``, ``patch_size``, ``num_classes``, ``approximate_gelu``
    (explicit fields win over the variant); training-only fields (``stoch_depth``, ``head_bias_init``)
    are ignored. ``timm.models.mlp_mixer.MlpMixer(**args)`` then computes what bv computes, for any
    size. For ``approximate_gelu=True`` (the default) the args hold ``act_layer="gelu_tanh"``: timm's
    MlpMixer wants a class there, so pass ``timm.layers.get_act_layer("gelu_tanh")`` instead (without
    it timm uses the exact GELU).
    """
    fields: dict[str, Any] = {"hidden_dim": 768, "num_blocks": 12, "tokens_mlp_dim": 384, "channels_mlp_dim": 3072}
    fields.update({"patch_size": (16, 16), "num_classes": None, "approximate_gelu": True})
    variant = model_kwargs.get("variant")
    if variant:
        fields.update(decode_variant(variant))
    fields.update({k: v for k, v in model_kwargs.items() if k != "variant"})
    width = int(fields["hidden_dim"])
    patch = pair(fields["patch_size"])
    args: dict[str, Any] = {
        "img_size": pair(image_size),
        "patch_size": patch[0] if patch[0] == patch[1] else patch,
        "num_blocks": int(fields["num_blocks"]),
        "embed_dim": width,
        "mlp_ratio": (
            mlp_ratio(width, int(fields["tokens_mlp_dim"])),
            mlp_ratio(width, int(fields["channels_mlp_dim"])),
        ),
        "num_classes": int(fields["num_classes"] or 0),
        "in_chans": int(channels),
        "global_pool": "avg",
    }
    if fields["approximate_gelu"]:
        args["act_layer"] = "gelu_tanh"
    return args


def timm_model_args(
    model_kwargs: Mapping[str, Any], *, image_size: int | tuple[int, int], channels: int = 3
) -> tuple[str, dict[str, Any]]:
    """bv Mixer kwargs -> ``(timm architecture, timm.create_model kwargs)``, for the sizes timm has a name for.

    timm registers Mixers only as ``mixer_{s,b,l}{16,32}_224``, and those names fix ``patch_size``,
    ``num_blocks`` and ``embed_dim`` (passing them again is an error in timm): the kwargs are
    :func:`timm_mixer_args` without those three. Other sizes (Mixer-H, patch 14, custom widths) have
    no timm name and raise ``ValueError``; build ``MlpMixer(**timm_mixer_args(...))`` for them.
    """
    args = timm_mixer_args(model_kwargs, image_size=image_size, channels=channels)
    width, depth, patch = args["embed_dim"], args["num_blocks"], args["patch_size"]
    for timm_size, bv_size in _TIMM_SIZES.items():
        hidden, blocks, _, _ = VARIANTS[bv_size]
        if (hidden, blocks) == (width, depth) and patch in (16, 32):
            fixed = ("patch_size", "num_blocks", "embed_dim")
            return f"mixer_{timm_size}{patch}_224", {k: v for k, v in args.items() if k not in fixed}
    raise ValueError(
        f"timm has no registered Mixer with embed_dim={width}, num_blocks={depth} and patch_size={patch}: it names "
        "only mixer_{s,b,l}{16,32}_224 (S: 512 wide and 8 blocks deep, B: 768 and 12, L: 1024 and 24; patch 16 or "
        "32). Build timm.models.mlp_mixer.MlpMixer(**timm_mixer_args(...)) directly for other sizes."
    )


def _architecture(arch: str) -> dict[str, Any]:
    """timm MlpMixer arguments and default image size of a Mixer architecture name."""
    base = arch.split(".", 1)[0]
    m = _ARCH_RE.fullmatch(base)
    if not m:
        raise ValueError(f"Unsupported timm architecture {arch!r}: not an MLP-Mixer. Supported: {_SUPPORTED}.")
    hidden, blocks, tokens, chans = VARIANTS[_TIMM_SIZES[m["size"]]]
    res = int(m["res"])
    return {
        "embed_dim": hidden,
        "num_blocks": blocks,
        "mlp_ratio": (tokens / hidden, chans / hidden),
        "patch_size": int(m["patch"]),
        "img_size": (res, res),
    }


def _check_model_args(arch: str, model_args: Mapping[str, Any]) -> None:
    for key, value in model_args.items():
        if key.endswith("drop_rate"):  # training-time only
            continue
        if key not in _ARG_VALUES:
            raise ValueError(
                f"timm model_args {key}={value!r} (architecture {arch!r}) has no counterpart in bv's Mixer; "
                f"supported model_args: {', '.join(_ARG_VALUES)}."
            )
        allowed = _ARG_VALUES[key]
        if allowed is not None and value not in allowed:
            raise ValueError(
                f"timm model_args {key}={value!r} (architecture {arch!r}) cannot be represented in bv's Mixer; "
                f"supported values: {', '.join(map(repr, allowed))}."
            )


def mixer_kwargs_from_timm_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A timm Hub ``config.json`` (as ``timm.models.save_for_hf`` writes it) -> bv Mixer kwargs plus input shape.

    Reads ``architecture``, ``num_classes``, ``model_args`` and ``pretrained_cfg.input_size``. Returns
    ``variant`` (``"B/16"``) when the sizes are a bv variant's, else ``hidden_dim``, ``num_blocks``,
    ``tokens_mlp_dim``, ``channels_mlp_dim`` and ``patch_size``; ``num_classes``;
    ``approximate_gelu`` (False unless the config names ``"gelu_tanh"``); and ``image_size``
    (``(h, w)``) and ``channels``, which are not ``create_model`` arguments: pop them first.
    """
    if "architecture" not in cfg:
        raise ValueError(f"Not a timm config: no 'architecture' among {sorted(cfg)}.")
    arch = str(cfg["architecture"])
    args = _architecture(arch)
    model_args = dict(cfg.get("model_args") or {})
    _check_model_args(arch, model_args)
    args.update(model_args)
    pcfg = pretrained_cfg(cfg)
    num_classes = int(cfg.get("num_classes", args.get("num_classes", pcfg.get("num_classes", 1000))))

    width, depth = int(args["embed_dim"]), int(args["num_blocks"])
    ratio = args["mlp_ratio"]
    token_ratio, channel_ratio = (ratio, ratio) if isinstance(ratio, (int, float)) else ratio
    tokens, chans = int(token_ratio * width), int(channel_ratio * width)
    patch = pair(args["patch_size"])
    out: dict[str, Any] = {}
    variant = next((n for n, v in VARIANTS.items() if v == (width, depth, tokens, chans)), None)
    if variant and patch[0] == patch[1]:
        out["variant"] = f"{variant}/{patch[0]}"
    else:
        out.update(hidden_dim=width, num_blocks=depth, tokens_mlp_dim=tokens, channels_mlp_dim=chans, patch_size=patch)
    out["num_classes"] = num_classes
    out["approximate_gelu"] = args.get("act_layer") == "gelu_tanh"
    input_size = pcfg.get("input_size")
    if "img_size" in model_args or not input_size:
        out["image_size"] = pair(args["img_size"])
    else:
        out["image_size"] = pair(input_size[-2:])
    out["channels"] = int(args.get("in_chans", input_size[0] if input_size else 3))
    return out


def timm_preprocessing(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The eval preprocessing of a timm Mixer config: ``mean``, ``std`` (of 0..1 RGB), ``crop_pct`` and
    ``interpolation``, with the defaults of timm's Mixers (0.5 mean and std, 0.875, bicubic) for missing entries.

    timm resizes the shorter side to ``size / crop_pct``, then center-crops ``size``.
    """
    pcfg = pretrained_cfg(cfg)
    return {
        "mean": tuple(float(x) for x in pcfg.get("mean", (0.5, 0.5, 0.5))),
        "std": tuple(float(x) for x in pcfg.get("std", (0.5, 0.5, 0.5))),
        "crop_pct": float(pcfg.get("crop_pct") or 0.875),
        "interpolation": str(pcfg.get("interpolation", "bicubic")),
    }

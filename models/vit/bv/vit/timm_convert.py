"""Convert ViT weights between bv (big_vision parameter names, flax layouts) and timm (PyTorch).

Pure numpy: neither torch nor timm is imported, so this works where they are not installed;
a timm state dict is a mapping from timm's names to numpy arrays (``{k: v.numpy() for k, v in
model.state_dict().items()}``, or ``safetensors.numpy.load_file`` on a timm Hub folder).

What maps onto what (timm's ``VisionTransformer``):

* ``embedding`` (Conv, HWIO kernel) <-> ``patch_embed.proj`` (OIHW);
* ``pos_embedding`` [1, N, D] <-> ``pos_embed``. big_vision adds the posemb to the patches
  only, before prepending [cls]; timm (``no_embed_class=False``, its default) adds a posemb
  entry to [cls] too. So bv -> timm writes a zero [cls] entry, and timm -> bv folds that entry
  into ``cls`` (``cls = cls_token + pos_embed[:, 0]``), which leaves the outputs unchanged;
* ``Transformer/encoderblock_{i}`` <-> ``blocks.{i}``: the separate flax query/key/value
  kernels [D, heads, head_dim] <-> the fused ``attn.qkv`` Linear, ``out`` <-> ``attn.proj``;
* ``Transformer/encoder_norm`` <-> ``norm``; ``MAPHead_0`` <-> ``attn_pool``
  (``AttentionPoolLatent``, timm's ``global_pool='map'``); ``head`` <-> ``head``.

bv's MLP uses the tanh approximation of GELU by default (as big_vision does); timm's default is
the exact (erf) GELU. The ViT's ``approximate_gelu`` field picks one: :func:`timm_model_args`
asks timm for the matching ``act_layer`` (``'gelu_tanh'`` or ``'gelu'``), and
:func:`vit_kwargs_from_timm_config` sets ``approximate_gelu=False`` for timm models with the exact
GELU (most of timm's own ``vit_*`` weights), so both compute the same function.
"""

from __future__ import annotations

import math
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
from bv.vit.model import VARIANTS, decode_variant, posemb_sincos_2d

__all__ = [
    "params_to_timm",
    "timm_model_args",
    "timm_preprocessing",
    "timm_to_params",
    "vit_kwargs_from_timm_config",
]

# timm's size names of plain ViTs: (embed_dim, depth, num_heads, mlp_ratio), the ratio as timm writes it
# (its MLP width is ``int(embed_dim * mlp_ratio)``).
_TIMM_SIZES: dict[str, tuple[int, int, int, float]] = {
    "tiny": (192, 12, 3, 4.0),
    "small": (384, 12, 6, 4.0),
    "base": (768, 12, 12, 4.0),
    "large": (1024, 24, 16, 4.0),
    "huge": (1280, 32, 16, 4.0),
    "giant": (1408, 40, 16, 48 / 11),
    "gigantic": (1664, 48, 16, 64 / 13),
    "so400m": (1152, 27, 16, 3.7362),
    "giantopt": (1536, 40, 16, 4.0),
}
_BV_TO_TIMM_SIZE = {"Ti": "tiny", "S": "small", "B": "base", "L": "large", "H": "huge", "g": "giant", "G": "gigantic"}
# (size, patch) pairs registered as ``vit_{size}_patch{patch}_224`` in timm.
_TIMM_224_NAMES = {
    ("tiny", 16),
    ("small", 32),
    ("small", 16),
    ("small", 8),
    ("base", 32),
    ("base", 16),
    ("base", 8),
    ("large", 32),
    ("large", 16),
    ("large", 14),
    ("huge", 14),
    ("giant", 14),
    ("gigantic", 14),
}

# The timm architectures that are plain ViTs, with the VisionTransformer arguments their factory sets
# beyond sizes and patch. Each regex has the groups ``size``, ``patch`` and ``res``.
_ARCHITECTURES: list[tuple[re.Pattern[str], dict[str, Any]]] = [
    (re.compile(r"vit_(?P<size>tiny|small|base|large|huge|giant|gigantic)_patch(?P<patch>\d+)_(?P<res>\d+)"), {}),
    (
        re.compile(r"vit_(?P<size>base|huge|giant)_patch(?P<patch>\d+)_gap_(?P<res>\d+)"),
        {"class_token": False, "global_pool": "avg", "fc_norm": False},
    ),
    (
        re.compile(r"vit_(?P<size>base|large|so400m|giantopt)_patch(?P<patch>\d+)_siglip_(?P<res>\d+)"),
        {"class_token": False, "global_pool": "map"},
    ),
    (
        re.compile(r"vit_(?P<size>base|large|so400m|giantopt)_patch(?P<patch>\d+)_siglip_gap_(?P<res>\d+)"),
        {"class_token": False, "global_pool": "avg", "fc_norm": False},
    ),
    (re.compile(r"deit_(?P<size>tiny|small|base)_patch(?P<patch>16)_(?P<res>\d+)"), {}),
]
_SUPPORTED = (
    "vit_{tiny,small,base,large,huge,giant,gigantic}_patch{P}_{RES}, vit_{base,huge,giant}_patch{P}_gap_{RES}, "
    "vit_{base,large,so400m,giantopt}_patch{P}_siglip[_gap]_{RES} and deit_{tiny,small,base}_patch16_{RES}"
)
_SIZE_OVERRIDES = {"vit_base_patch16_gap": {"num_heads": 16}}  # timm's B/16 gap model has 16 heads

# VisionTransformer arguments a timm config may set, and the values bv can represent (None: any value).
_ARG_VALUES: dict[str, tuple[Any, ...] | None] = {
    "img_size": None,
    "patch_size": None,
    "embed_dim": None,
    "depth": None,
    "num_heads": None,
    "mlp_ratio": None,
    "num_classes": None,
    "in_chans": None,
    "global_pool": None,
    "class_token": None,
    "fc_norm": None,
    "no_embed_class": None,
    "act_layer": (None, "gelu", "gelu_tanh"),
    "qkv_bias": (True,),
    "proj_bias": (True,),
    "qk_norm": (False,),
    "init_values": (None,),
    "reg_tokens": (0,),
    "pre_norm": (False,),
    "final_norm": (True,),
    "pos_embed": ("learn",),
    "pool_include_prefix": (False,),
    "dynamic_img_pad": (False,),
    "dynamic_img_size": None,  # resamples the posemb for other sizes; the weights are the same
    "weight_init": None,
    "fix_init": None,
}


# --------------------------------------------------------------------------- bv -> timm


def _check_heads(mha: Mapping[str, Any], num_heads: int, where: str) -> None:
    shape = np.shape(mha["query"]["kernel"])
    if len(shape) != 3 or shape[1] != num_heads:
        raise ValueError(
            f"{where}/query/kernel has shape {shape}, expected [width, num_heads={num_heads}, head_dim]: "
            "pass the num_heads the model was built with."
        )


def _proj_in(mha: Mapping[str, Any], name: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A flax q/k/v projection ([D, heads, head_dim] kernel) as a torch Linear weight [heads*head_dim, D]."""
    return f32(mha[name]["kernel"]).reshape(width, -1).T, f32(mha[name]["bias"]).reshape(-1)


def _proj_out(mha: Mapping[str, Any], width: int) -> tuple[np.ndarray, np.ndarray]:
    """The flax output projection ([heads, head_dim, D] kernel) as a torch Linear weight [D, heads*head_dim]."""
    return f32(mha["out"]["kernel"]).reshape(-1, width).T.copy(), f32(mha["out"]["bias"])


def _pool_type(params: Mapping[str, Any]) -> str:
    if "cls" in params and "MAPHead_0" in params:
        raise ValueError("These ViT params have both a [cls] token ('cls') and a MAP head ('MAPHead_0').")
    return "tok" if "cls" in params else "map" if "MAPHead_0" in params else "gap"


def params_to_timm(
    params: Mapping[str, Any], *, num_heads: int, posemb_grid: tuple[int, int] | None = None
) -> dict[str, np.ndarray]:
    """bv ViT params (non-scan layout) -> a timm ``VisionTransformer`` state dict of float32 numpy arrays.

    The pooling follows from the params: ``cls`` -> timm ``global_pool='token'``, ``MAPHead_0`` ->
    ``'map'`` (``attn_pool``), neither -> ``'avg'``; build the timm model with :func:`timm_model_args`.
    A model built with ``posemb='sincos2d'`` has no ``pos_embedding`` param: pass its patch grid
    ``(h, w)`` as ``posemb_grid`` and the fixed embedding is written as timm's ``pos_embed``.
    Load with ``model.load_state_dict({k: torch.from_numpy(v) ...}, strict=True)``.
    """
    params = dict(params)
    if "pre_logits" in params:
        raise ValueError(
            "This ViT has a 'pre_logits' layer (rep_size): timm's VisionTransformer has no counterpart, so it "
            "cannot be converted. Only ViTs built with rep_size=False convert to timm."
        )
    if "Transformer" not in params or "embedding" not in params:
        raise ValueError(f"Not bv ViT params: expected 'embedding' and 'Transformer' among {sorted(params)}.")
    enc = dict(params["Transformer"])
    if "encoderblock" in enc:
        raise ValueError("These params use the scan layout (Transformer/encoderblock): apply scan_to_pyloop first.")
    depth = len([k for k in enc if k.startswith("encoderblock_")])
    if depth == 0 or any(f"encoderblock_{i}" not in enc for i in range(depth)):
        raise ValueError(f"Expected Transformer/encoderblock_0..N-1, found {sorted(enc)}.")
    pool = _pool_type(params)

    out: dict[str, np.ndarray] = {}
    kernel = f32(params["embedding"]["kernel"])  # [ph, pw, in, D]
    width = kernel.shape[-1]
    if "pos_embedding" in params:
        posemb = f32(params["pos_embedding"])
    elif posemb_grid is not None:
        posemb = posemb_sincos_2d(posemb_grid[0], posemb_grid[1], width).astype(np.float32)
    else:
        raise ValueError(
            "These params have no 'pos_embedding' (a posemb='sincos2d' model): pass posemb_grid=(h, w), the "
            "patch grid (image size // patch size), so that the fixed embedding can be written as timm's pos_embed."
        )
    if pool == "tok":
        out["cls_token"] = f32(params["cls"]).reshape(1, 1, width)
        posemb = np.concatenate([np.zeros((1, 1, width), np.float32), posemb], axis=1)
    out["pos_embed"] = posemb
    out["patch_embed.proj.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
    out["patch_embed.proj.bias"] = f32(params["embedding"]["bias"])

    for i in range(depth):
        block, pre = enc[f"encoderblock_{i}"], f"blocks.{i}"
        mha = block["MultiHeadDotProductAttention_0"]
        _check_heads(mha, num_heads, f"Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0")
        norm_to_timm(out, f"{pre}.norm1", block["LayerNorm_0"])
        qkv = [_proj_in(mha, name, width) for name in ("query", "key", "value")]
        out[f"{pre}.attn.qkv.weight"] = np.concatenate([w for w, _ in qkv], axis=0)
        out[f"{pre}.attn.qkv.bias"] = np.concatenate([b for _, b in qkv], axis=0)
        out[f"{pre}.attn.proj.weight"], out[f"{pre}.attn.proj.bias"] = _proj_out(mha, width)
        norm_to_timm(out, f"{pre}.norm2", block["LayerNorm_1"])
        mlp_to_timm(out, f"{pre}.mlp", block["MlpBlock_0"])
    norm_to_timm(out, "norm", enc["encoder_norm"])

    if pool == "map":
        head = params["MAPHead_0"]
        mha = head["MultiHeadDotProductAttention_0"]
        _check_heads(mha, num_heads, "MAPHead_0/MultiHeadDotProductAttention_0")
        out["attn_pool.latent"] = f32(head["probe"]).reshape(1, -1, width)
        out["attn_pool.q.weight"], out["attn_pool.q.bias"] = _proj_in(mha, "query", width)
        k, v = _proj_in(mha, "key", width), _proj_in(mha, "value", width)
        out["attn_pool.kv.weight"] = np.concatenate([k[0], v[0]], axis=0)
        out["attn_pool.kv.bias"] = np.concatenate([k[1], v[1]], axis=0)
        out["attn_pool.proj.weight"], out["attn_pool.proj.bias"] = _proj_out(mha, width)
        norm_to_timm(out, "attn_pool.norm", head["LayerNorm_0"])
        mlp_to_timm(out, "attn_pool.mlp", head["MlpBlock_0"])
    if "head" in params:
        out["head.weight"], out["head.bias"] = linear_to_timm(params["head"])
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


# --------------------------------------------------------------------------- timm -> bv


def _heads_in(weight: np.ndarray, bias: np.ndarray, num_heads: int) -> dict[str, np.ndarray]:
    """A torch Linear [heads*head_dim, D] as a flax q/k/v projection ([D, heads, head_dim] kernel)."""
    return {"kernel": weight.T.reshape(weight.shape[1], num_heads, -1), "bias": bias.reshape(num_heads, -1)}


def _heads_out(sd: TimmStateDict, prefix: str, num_heads: int) -> dict[str, np.ndarray]:
    weight = sd[f"{prefix}.weight"]  # [D, heads*head_dim]
    return {"kernel": weight.T.reshape(num_heads, -1, weight.shape[0]), "bias": sd[f"{prefix}.bias"]}


def _check_num_heads(width: int, num_heads: int) -> None:
    if num_heads <= 0 or width % num_heads:
        raise ValueError(f"num_heads={num_heads} does not divide the model width {width}.")


_NOT_PLAIN = {
    "fc_norm.weight": "an fc_norm (a LayerNorm after pooling, timm's default for global_pool='avg'; bv normalises "
    "before pooling): build the timm model with fc_norm=False",
    "reg_token": "register tokens (reg_tokens > 0)",
    "norm_pre.weight": "a LayerNorm before the blocks (pre_norm=True, as in CLIP)",
    "blocks.0.ls1.gamma": "layer scale (init_values)",
    "blocks.0.attn.q_norm.weight": "query/key normalisation (qk_norm=True)",
    "dist_token": "a distillation token (DeiT distilled)",
    "head_dist.weight": "a distillation head (DeiT distilled)",
}


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def timm_to_params(
    state_dict: Mapping[str, Any], *, num_heads: int, no_embed_class: bool | None = None
) -> dict[str, Any]:
    """A timm ``VisionTransformer`` state dict (numpy or anything ``np.asarray`` takes) -> bv ViT params.

    The result is the nested, non-scan bv layout, float32. Its pooling follows from the state dict:
    ``cls_token`` -> ``pool_type='tok'``, ``attn_pool.*`` -> ``'map'``, neither -> ``'gap'``. The state
    dict does not record timm's ``global_pool``, so a timm model with a class token is taken to pool
    that token (check the config with :func:`vit_kwargs_from_timm_config`). Whether ``pos_embed`` has an
    entry for the class token (timm's ``no_embed_class=False``) is read off its length (a square grid
    of patches, plus one or not); pass ``no_embed_class`` for non-square grids.
    Parts bv's ViT cannot represent (fc_norm, register tokens, layer scale, ...) raise ``ValueError``.
    """
    sd = TimmStateDict(state_dict, "VisionTransformer")
    for name, what in _NOT_PLAIN.items():
        if name in sd:
            raise ValueError(f"This timm model has {what}; bv's ViT has no such part, so it cannot be converted.")
    if "norm.weight" not in sd:
        raise ValueError(
            "This timm model has no final 'norm' (final_norm=False, or fc_norm=True): bv's ViT always applies "
            "Transformer/encoder_norm before pooling, so it cannot be converted."
        )

    kernel = sd["patch_embed.proj.weight"]  # [D, in, ph, pw]
    width = kernel.shape[0]
    _check_num_heads(width, num_heads)
    params: dict[str, Any] = {
        "embedding": {"kernel": np.ascontiguousarray(kernel.transpose(2, 3, 1, 0)), "bias": sd["patch_embed.proj.bias"]}
    }
    posemb = sd["pos_embed"].reshape(1, -1, width)
    if "cls_token" in sd:
        cls = sd["cls_token"].reshape(1, 1, width)
        n = posemb.shape[1]
        if no_embed_class is None:
            if _is_square(n - 1) == _is_square(n):
                raise ValueError(
                    f"Cannot tell whether pos_embed (length {n}) has an entry for the class token: pass "
                    "no_embed_class=True (it has none) or False (its first entry is the class token's)."
                )
            no_embed_class = _is_square(n)
        if not no_embed_class:
            cls, posemb = cls + posemb[:, :1], posemb[:, 1:]
        params["cls"] = cls
    params["pos_embedding"] = np.ascontiguousarray(posemb)

    blocks: dict[str, Any] = {}
    depth = len({k.split(".")[1] for k in sd.unused if k.startswith("blocks.")})
    for i in range(depth):
        pre = f"blocks.{i}"
        qkv_w, qkv_b = sd[f"{pre}.attn.qkv.weight"], sd[f"{pre}.attn.qkv.bias"]
        (qw, kw, vw), (qb, kb, vb) = np.split(qkv_w, 3, axis=0), np.split(qkv_b, 3, axis=0)
        blocks[f"encoderblock_{i}"] = {
            "LayerNorm_0": norm_from_timm(sd, f"{pre}.norm1"),
            "MultiHeadDotProductAttention_0": {
                "query": _heads_in(qw, qb, num_heads),
                "key": _heads_in(kw, kb, num_heads),
                "value": _heads_in(vw, vb, num_heads),
                "out": _heads_out(sd, f"{pre}.attn.proj", num_heads),
            },
            "LayerNorm_1": norm_from_timm(sd, f"{pre}.norm2"),
            "MlpBlock_0": mlp_from_timm(sd, f"{pre}.mlp"),
        }
    blocks["encoder_norm"] = norm_from_timm(sd, "norm")
    params["Transformer"] = blocks

    if "attn_pool.latent" in sd:
        if "cls_token" in sd:
            raise ValueError("This timm model has a class token and an attention pool; bv's ViT has no such model.")
        latent = sd["attn_pool.latent"]
        if latent.shape[1] != 1:
            raise ValueError(f"attn_pool.latent has {latent.shape[1]} latents; bv's MAP head has one probe.")
        kv_w, kv_b = sd["attn_pool.kv.weight"], sd["attn_pool.kv.bias"]
        (kw, vw), (kb, vb) = np.split(kv_w, 2, axis=0), np.split(kv_b, 2, axis=0)
        params["MAPHead_0"] = {
            "probe": latent.reshape(1, 1, width),
            "MultiHeadDotProductAttention_0": {
                "query": _heads_in(sd["attn_pool.q.weight"], sd["attn_pool.q.bias"], num_heads),
                "key": _heads_in(kw, kb, num_heads),
                "value": _heads_in(vw, vb, num_heads),
                "out": _heads_out(sd, "attn_pool.proj", num_heads),
            },
            "LayerNorm_0": norm_from_timm(sd, "attn_pool.norm"),
            "MlpBlock_0": mlp_from_timm(sd, "attn_pool.mlp"),
        }
    if "head.weight" in sd:
        params["head"] = linear_from_timm(sd, "head")
    if sd.unused:
        raise ValueError(
            f"The timm state dict has entries a plain ViT does not: {sorted(sd.unused)[:8]}; bv's ViT cannot "
            "represent that model."
        )
    return params


# --------------------------------------------------------------------------- architectures and configs


def timm_model_args(model_kwargs: Mapping[str, Any], *, image_size: int | tuple[int, int]) -> tuple[str, dict]:
    """bv ViT kwargs (as given to ``bv.vit.create_model``) -> ``(timm architecture, timm.create_model kwargs)``.

    ``model_kwargs`` may hold ``variant`` (``"B/16"``) and the ViT fields ``width``, ``depth``, ``mlp_dim``,
    ``num_heads``, ``patch_size``, ``pool_type``, ``num_classes``, ``posemb``, ``rep_size`` (explicit
    fields win over the variant, as in ``create_model``); training-only fields (dropout, scan, dtypes)
    are ignored. ``image_size`` is the input resolution (timm's ``img_size`` fixes its patch grid).
    Every architecture argument is passed explicitly, so ``timm.create_model(name, pretrained=False,
    **kwargs)`` computes what bv computes whatever the name's defaults; the name is the closest
    registered ``vit_{size}_patch{P}_224`` (``vit_base_patch16_224`` for sizes timm has no name for).
    """
    fields: dict[str, Any] = {"width": 768, "depth": 12, "mlp_dim": None, "num_heads": 12, "patch_size": (16, 16)}
    fields.update({"pool_type": "gap", "posemb": "learn", "rep_size": False, "num_classes": None})
    variant = model_kwargs.get("variant")
    if variant:
        fields.update(decode_variant(variant))
    fields.update({k: v for k, v in model_kwargs.items() if k != "variant"})
    if fields["rep_size"]:
        raise ValueError("rep_size (a 'pre_logits' layer) has no timm counterpart: only rep_size=False converts.")
    pool = fields["pool_type"]
    if pool not in ("gap", "tok", "map"):
        raise ValueError(f"pool_type={pool!r} has no timm counterpart; convertible pool types: 'gap', 'tok', 'map'.")
    if fields["posemb"] not in ("learn", "sincos2d"):
        raise ValueError(f"Unknown posemb {fields['posemb']!r}: expected 'learn' or 'sincos2d'.")
    width, depth, num_heads = int(fields["width"]), int(fields["depth"]), int(fields["num_heads"])
    mlp_dim = int(fields["mlp_dim"] or 4 * width)
    patch = pair(fields["patch_size"])

    name = "vit_base_patch16_224"
    for bv_size, timm_size in _BV_TO_TIMM_SIZE.items():
        if VARIANTS[bv_size] == (width, depth, mlp_dim, num_heads) and patch[0] == patch[1]:
            if (timm_size, patch[0]) in _TIMM_224_NAMES:
                name = f"vit_{timm_size}_patch{patch[0]}_224"
    kwargs: dict[str, Any] = {
        "img_size": pair(image_size),
        "patch_size": patch[0] if patch[0] == patch[1] else patch,
        "embed_dim": width,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": mlp_ratio(width, mlp_dim),
        "num_classes": int(fields["num_classes"] or 0),
        "global_pool": {"gap": "avg", "tok": "token", "map": "map"}[pool],
        "class_token": pool == "tok",
        "no_embed_class": False,
        "fc_norm": False,
        "qkv_bias": True,
        "act_layer": "gelu_tanh" if fields.get("approximate_gelu", True) else "gelu",
    }
    return name, kwargs


def _architecture(arch: str) -> tuple[dict[str, Any], tuple[int, int]]:
    """timm VisionTransformer arguments and default image size of a plain-ViT architecture name."""
    base = arch.split(".", 1)[0]  # drop a pretrained tag such as ".augreg_in21k"
    for regex, extra in _ARCHITECTURES:
        m = regex.fullmatch(base)
        if m:
            width, depth, heads, ratio = _TIMM_SIZES[m["size"]]
            args: dict[str, Any] = {
                "embed_dim": width,
                "depth": depth,
                "num_heads": heads,
                "mlp_ratio": ratio,
                "patch_size": int(m["patch"]),
                **extra,
            }
            args.update(_SIZE_OVERRIDES.get(base.rsplit("_", 1)[0], {}))
            res = int(m["res"])
            return args, (res, res)
    raise ValueError(f"Unsupported timm architecture {arch!r}: not a plain ViT. Supported: {_SUPPORTED}.")


def _image_size(cfg: Mapping[str, Any], default: tuple[int, int]) -> tuple[int, int]:
    model_args = cfg.get("model_args") or {}
    if model_args.get("img_size") is not None:
        return pair(model_args["img_size"])
    input_size = pretrained_cfg(cfg).get("input_size")
    return pair(input_size[-2:]) if input_size else default


def vit_kwargs_from_timm_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A timm Hub ``config.json`` (as ``timm.models.save_for_hf`` writes it) -> bv ViT kwargs plus image size.

    Reads ``architecture``, ``num_classes`` and ``model_args`` (absent from older exports), and
    ``pretrained_cfg.input_size``. Returns ``variant`` (as ``"B/16"``) when the sizes match a bv
    variant, else ``width``/``depth``/``mlp_dim``/``num_heads``/``patch_size``; and ``pool_type``,
    ``num_classes`` and ``image_size`` (``(h, w)``, not a ``create_model`` argument: pop it first).
    Architectures and arguments bv's ViT cannot represent raise ``ValueError``.
    """
    if "architecture" not in cfg:
        raise ValueError(f"Not a timm config: no 'architecture' among {sorted(cfg)}.")
    arch = str(cfg["architecture"])
    args, default_size = _architecture(arch)
    model_args = dict(cfg.get("model_args") or {})
    for key, value in model_args.items():
        if key.endswith("drop_rate"):  # training-time only
            continue
        if key not in _ARG_VALUES:
            raise ValueError(
                f"timm model_args {key}={value!r} (architecture {arch!r}) has no counterpart in bv's ViT; "
                f"supported model_args: {', '.join(_ARG_VALUES)}."
            )
        allowed = _ARG_VALUES[key]
        if allowed is not None and value not in allowed:
            raise ValueError(
                f"timm model_args {key}={value!r} (architecture {arch!r}) cannot be represented in bv's ViT; "
                f"supported values: {', '.join(map(repr, allowed))}."
            )
    args.update(model_args)
    num_classes = int(cfg.get("num_classes", args.get("num_classes", pretrained_cfg(cfg).get("num_classes", 1000))))

    class_token = bool(args.get("class_token", True))
    global_pool = args.get("global_pool", "token")
    fc_norm = args.get("fc_norm")
    if fc_norm is None:  # timm's default: a LayerNorm after pooling for the averaging pools
        fc_norm = global_pool in ("avg", "avgmax", "max")
    if fc_norm:
        raise ValueError(
            f"timm model {arch!r} uses fc_norm (a LayerNorm after {global_pool!r} pooling instead of before it): "
            "bv's ViT cannot represent it. Supported: fc_norm=False."
        )
    if global_pool == "token" and class_token:
        pool_type = "tok"
    elif global_pool == "avg" and not class_token:
        pool_type = "gap"
    elif global_pool == "map" and not class_token:
        pool_type = "map"
    else:
        raise ValueError(
            f"timm model {arch!r} pools with global_pool={global_pool!r} and class_token={class_token}: bv's ViT "
            "supports 'token' with a class token, and 'avg' or 'map' without one."
        )

    width, depth, num_heads = int(args["embed_dim"]), int(args["depth"]), int(args["num_heads"])
    mlp_dim = int(width * float(args.get("mlp_ratio", 4.0)))
    patch = pair(args["patch_size"])
    out: dict[str, Any] = {}
    variant = next((n for n, v in VARIANTS.items() if v == (width, depth, mlp_dim, num_heads)), None)
    if variant and patch[0] == patch[1]:
        out["variant"] = f"{variant}/{patch[0]}"
    else:
        out.update(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads, patch_size=patch)
    # timm's default activation is the exact GELU (nn.GELU); "gelu_tanh" is big_vision's approximation.
    approximate = args.get("act_layer") == "gelu_tanh"
    out.update(pool_type=pool_type, num_classes=num_classes, approximate_gelu=approximate)
    out["image_size"] = _image_size(cfg, default_size)
    return out


def timm_preprocessing(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The eval preprocessing of a timm config: ``image_size`` (h, w), ``mean``, ``std`` (of 0..1 RGB),
    ``crop_pct``, ``crop_mode`` and ``interpolation``, with timm's defaults for missing entries.

    timm resizes the shorter side to ``size / crop_pct``, then center-crops ``size`` (``crop_mode='center'``).
    """
    pcfg = pretrained_cfg(cfg)
    input_size = pcfg.get("input_size")
    return {
        "image_size": pair(input_size[-2:]) if input_size else _image_size(cfg, (224, 224)),
        "mean": tuple(float(x) for x in pcfg.get("mean", (0.485, 0.456, 0.406))),
        "std": tuple(float(x) for x in pcfg.get("std", (0.229, 0.224, 0.225))),
        "crop_pct": float(pcfg.get("crop_pct", 0.875)),
        "crop_mode": str(pcfg.get("crop_mode", "center")),
        "interpolation": str(pcfg.get("interpolation", "bilinear")),
    }

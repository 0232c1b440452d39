"""Tests for the bv <-> timm ViT conversion: logits parity with real timm both ways, timm Hub folders, errors."""

from __future__ import annotations

import functools
import json
from typing import Any

import jax
import numpy as np
import pytest
import safetensors.numpy
import timm
import torch
from bv.core.tree import flatten_with_names, map_with_names
from bv.vit import create_model
from bv.vit.timm_convert import (
    params_to_timm,
    timm_model_args,
    timm_preprocessing,
    timm_to_params,
    vit_kwargs_from_timm_config,
)
from timm.models import save_for_hf

IMAGES = np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
TOL = 1e-4  # max abs logits difference, fp32


# --------------------------------------------------------------------------- helpers


class _Noise:
    """Cheap i.i.d. N(0, 1) draws: a random slice of one pre-drawn pool (B/16 has 86M weights to fill)."""

    def __init__(self, seed: int, pool: int = 1 << 22) -> None:
        self._rng = np.random.default_rng(seed)
        self._pool = self._rng.standard_normal(pool, dtype=np.float32)

    def __call__(self, shape: tuple[int, ...], scale: float, loc: float = 0.0) -> np.ndarray:
        size = int(np.prod(shape))
        start = int(self._rng.integers(0, self._pool.size - size + 1))
        return (self._pool[start : start + size] * np.float32(scale) + np.float32(loc)).reshape(shape)


def _bv_random_params(model: Any, seed: int) -> Any:
    """Random bv params (all non-zero, unlike the initialisers' zero biases/head) without compiling init."""
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), IMAGES)["params"]
    noise = _Noise(seed)

    def fill(name: str, leaf: Any) -> np.ndarray:
        shape = tuple(leaf.shape)
        if name.endswith("scale"):
            return noise(shape, 0.1, loc=1.0)
        if name.endswith("kernel"):
            attn_in = name.endswith(("query/kernel", "key/kernel", "value/kernel"))
            fan_in = shape[0] if attn_in else int(np.prod(shape[:-1]))
            return noise(shape, fan_in**-0.5)
        return noise(shape, 0.5 if name in ("pos_embedding", "cls") or name.endswith("probe") else 0.1)

    return map_with_names(fill, abstract)


@functools.lru_cache
def _compiled_apply(model: Any) -> Any:
    """One cheap (unoptimised) compile per model: on CPU compiling, not running, dominates these tests."""
    return jax.jit(model.apply, compiler_options={"xla_backend_optimization_level": 0})


def _bv_logits(model: Any, params: Any) -> np.ndarray:
    logits, _ = _compiled_apply(model)({"params": params}, IMAGES)
    return np.asarray(logits)


def _timm_skeleton(name: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    """The timm model without weights (meta device, no init): building it costs next to nothing."""
    return timm.create_model(name, pretrained=False, device="meta", weight_init="skip", **kwargs)


def _timm_with(name: str, kwargs: dict[str, Any], state_dict: dict[str, np.ndarray]) -> torch.nn.Module:
    model = _timm_skeleton(name, kwargs)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True, assign=True)
    return model.eval()


def _timm_random_state_dict(name: str, kwargs: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Random weights for every timm entry (timm starts cls_token, biases and some others at ~zero)."""
    noise = _Noise(seed)
    out = {}
    for key, value in _timm_skeleton(name, kwargs).state_dict().items():
        shape = tuple(value.shape)
        if key in ("cls_token", "pos_embed", "attn_pool.latent"):
            out[key] = noise(shape, 0.5)
        elif "norm" in key and key.endswith("weight"):
            out[key] = noise(shape, 0.1, loc=1.0)
        elif key.endswith("weight"):
            out[key] = noise(shape, int(np.prod(shape[1:])) ** -0.5)
        else:
            out[key] = noise(shape, 0.1)
    return out


def _timm_logits(model: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy())).numpy()


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@functools.lru_cache
def _case(variant: str, pool: str, posemb: str = "learn") -> tuple[dict[str, Any], Any, str, dict[str, Any]]:
    kw: dict[str, Any] = {"variant": variant, "pool_type": pool, "num_classes": 10, "posemb": posemb}
    name, timm_kw = timm_model_args(kw, image_size=32)
    return kw, create_model(**kw), name, timm_kw


CASES = [(v, p) for v in ("Ti/16", "S/16", "B/16") for p in ("gap", "tok")] + [("Ti/16", "map")]


# --------------------------------------------------------------------------- parity with real timm


@pytest.mark.parametrize("variant,pool", CASES)
def test_bv_to_timm_same_logits(variant: str, pool: str) -> None:
    _, model, name, timm_kw = _case(variant, pool)
    params = _bv_random_params(model, seed=1)
    timm_model = _timm_with(name, timm_kw, params_to_timm(params, num_heads=model.num_heads))
    expected = _bv_logits(model, params)
    assert expected.shape == (2, 10) and np.abs(expected).max() > 0.1  # a live head, not zeros
    assert _max_diff(_timm_logits(timm_model), expected) <= TOL


@pytest.mark.parametrize("variant,pool", CASES)
def test_timm_to_bv_same_logits(variant: str, pool: str) -> None:
    _, model, name, timm_kw = _case(variant, pool)
    state_dict = _timm_random_state_dict(name, timm_kw, seed=2)
    expected = _timm_logits(_timm_with(name, timm_kw, state_dict))
    params = timm_to_params(state_dict, num_heads=model.num_heads)
    assert np.abs(expected).max() > 0.1
    assert _max_diff(_bv_logits(model, params), expected) <= TOL


def test_timm_no_embed_class_to_bv_same_logits() -> None:
    # timm's no_embed_class=True layout: pos_embed covers the patches only, as in big_vision.
    _, model, name, timm_kw = _case("Ti/16", "tok")
    timm_kw = {**timm_kw, "no_embed_class": True}
    state_dict = _timm_random_state_dict(name, timm_kw, seed=3)
    assert state_dict["pos_embed"].shape == (1, 4, 192)
    expected = _timm_logits(_timm_with(name, timm_kw, state_dict))
    params = timm_to_params(state_dict, num_heads=3)
    np.testing.assert_array_equal(params["cls"], state_dict["cls_token"])
    assert _max_diff(_bv_logits(model, params), expected) <= TOL


def test_sincos2d_posemb_to_timm_same_logits() -> None:
    _, model, name, timm_kw = _case("Ti/16", "gap", "sincos2d")
    params = _bv_random_params(model, seed=4)
    assert "pos_embedding" not in params
    with pytest.raises(ValueError, match="posemb_grid"):
        params_to_timm(params, num_heads=3)
    timm_model = _timm_with(name, timm_kw, params_to_timm(params, num_heads=3, posemb_grid=(2, 2)))
    assert _max_diff(_timm_logits(timm_model), _bv_logits(model, params)) <= TOL


@pytest.mark.parametrize("pool", ["gap", "tok"])
def test_timm_hub_folder_loads_into_bv(tmp_path: Any, pool: str) -> None:
    """A folder written by timm's own save_for_hf: config.json + model.safetensors -> bv, same logits."""
    _, _, name, timm_kw = _case("Ti/16", pool)
    timm_model = _timm_with(name, timm_kw, _timm_random_state_dict(name, timm_kw, seed=5))
    save_for_hf(timm_model, str(tmp_path), safe_serialization=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    state_dict = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))

    kw = vit_kwargs_from_timm_config(cfg)
    # The timm model here was built by timm_model_args, i.e. with act_layer="gelu_tanh".
    assert kw == {
        "variant": "Ti/16",
        "pool_type": pool,
        "num_classes": 10,
        "approximate_gelu": True,
        "image_size": (32, 32),
    }
    kw.pop("image_size")
    model = create_model(**kw)
    params = timm_to_params(state_dict, num_heads=model.num_heads)
    assert _max_diff(_bv_logits(model, params), _timm_logits(timm_model)) <= TOL

    pp = timm_preprocessing(cfg)
    assert pp["image_size"] == (32, 32) and pp["crop_mode"] == "center"
    assert pp["mean"] == tuple(cfg["pretrained_cfg"]["mean"]) and pp["std"] == tuple(cfg["pretrained_cfg"]["std"])
    assert pp["crop_pct"] == cfg["pretrained_cfg"]["crop_pct"]
    assert pp["interpolation"] == cfg["pretrained_cfg"]["interpolation"]


# --------------------------------------------------------------------------- round trips and layouts


@pytest.mark.parametrize("pool", ["gap", "tok", "map"])
def test_bv_timm_bv_round_trip_is_bitwise(pool: str) -> None:
    _, model, _, _ = _case("Ti/16", pool)
    params = _bv_random_params(model, seed=6)
    back = timm_to_params(params_to_timm(params, num_heads=3), num_heads=3)
    expected, got = dict(flatten_with_names(params)), dict(flatten_with_names(back))
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].dtype == np.float32
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_tok_posemb_has_zero_cls_entry() -> None:
    _, model, name, timm_kw = _case("Ti/16", "tok")
    params = _bv_random_params(model, seed=7)
    sd = params_to_timm(params, num_heads=3)
    np.testing.assert_array_equal(sd["pos_embed"][:, 0], 0.0)
    np.testing.assert_array_equal(sd["cls_token"], params["cls"])
    expected = {k: tuple(v.shape) for k, v in _timm_skeleton(name, timm_kw).state_dict().items()}
    assert {k: v.shape for k, v in sd.items()} == expected


def test_model_args_mlp_ratio_gives_exact_mlp_width() -> None:
    # So400m's 4304 = 1152 * 3.736..., a ratio float arithmetic can round below.
    name, timm_kw = timm_model_args({"variant": "So400m/14", "pool_type": "map", "num_classes": 0}, image_size=224)
    model = _timm_skeleton(name, timm_kw)
    assert model.blocks[0].mlp.fc1.out_features == 4304
    assert model.attn_pool.mlp.fc1.out_features == 4304
    assert model.head_hidden_size == 1152 and len(model.blocks) == 27
    assert timm_model_args({"variant": "B/16", "pool_type": "tok", "num_classes": 5}, image_size=224) == (
        "vit_base_patch16_224",
        {
            "img_size": (224, 224),
            "patch_size": 16,
            "embed_dim": 768,
            "depth": 12,
            "num_heads": 12,
            "mlp_ratio": 4.0,
            "num_classes": 5,
            "global_pool": "token",
            "class_token": True,
            "no_embed_class": False,
            "fc_norm": False,
            "qkv_bias": True,
            "act_layer": "gelu_tanh",
        },
    )


# --------------------------------------------------------------------------- timm configs


def _legacy_config(arch: str, res: int = 224, num_classes: int = 1000) -> dict[str, Any]:
    """A config.json as older timm exports (most of the Hub) write it: no model_args."""
    return {
        "architecture": arch,
        "num_classes": num_classes,
        "num_features": 768,
        "pretrained_cfg": {
            "tag": "augreg2_in21k_ft_in1k",
            "input_size": [3, res, res],
            "interpolation": "bicubic",
            "crop_pct": 0.9,
            "crop_mode": "center",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "num_classes": num_classes,
        },
    }


@pytest.mark.parametrize(
    "arch,expected",
    [
        ("vit_base_patch16_224", {"variant": "B/16", "pool_type": "tok"}),
        ("vit_tiny_patch16_384", {"variant": "Ti/16", "pool_type": "tok"}),
        ("vit_large_patch14_224", {"variant": "L/14", "pool_type": "tok"}),
        ("vit_giant_patch14_224", {"variant": "g/14", "pool_type": "tok"}),
        ("deit_small_patch16_224", {"variant": "S/16", "pool_type": "tok"}),
        ("vit_so400m_patch14_siglip_384", {"variant": "So400m/14", "pool_type": "map"}),
        ("vit_large_patch16_siglip_gap_256", {"variant": "L/16", "pool_type": "gap"}),
        (
            "vit_base_patch16_gap_224",  # timm gives this one 16 heads, not 12: no bv variant
            {"width": 768, "depth": 12, "mlp_dim": 3072, "num_heads": 16, "patch_size": (16, 16), "pool_type": "gap"},
        ),
    ],
)
def test_kwargs_from_legacy_configs(arch: str, expected: dict[str, Any]) -> None:
    res = int(arch.rsplit("_", 1)[1])
    kw = vit_kwargs_from_timm_config(_legacy_config(arch, res))
    # Stock timm architectures use the exact GELU.
    assert kw == {**expected, "num_classes": 1000, "approximate_gelu": False, "image_size": (res, res)}


def test_supported_architectures_agree_with_timm() -> None:
    """The timm names the parser accepts build (in timm) the ViTs that the parsed kwargs describe.

    One name per family and size (the patch and resolution are read off the name the same way for all).
    """
    families: dict[tuple[str, ...], str] = {}
    for arch in timm.list_models(["vit_*", "deit_*"]):
        try:
            kw = vit_kwargs_from_timm_config({"architecture": arch, "num_classes": 0})
        except ValueError:
            continue
        family = (arch.split("_")[0], arch.split("_")[1], *[p for p in ("gap", "siglip") if f"_{p}_" in arch])
        families.setdefault(family, arch)
    assert len(families) >= 15, families
    for arch in families.values():
        kw = vit_kwargs_from_timm_config({"architecture": arch, "num_classes": 0})
        bv = create_model(**{k: v for k, v in kw.items() if k != "image_size"})
        model = _timm_skeleton(arch, {"num_classes": 0})
        mlp = model.blocks[0].mlp
        assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads, mlp.fc1.out_features) == (
            bv.width,
            bv.depth,
            bv.num_heads,
            bv.mlp_dim or 4 * bv.width,
        ), arch
        assert tuple(model.patch_embed.patch_size) == bv.patch_size, arch
        assert tuple(model.patch_embed.img_size) == kw["image_size"], arch
        pool = "tok" if model.global_pool == "token" else "map" if model.attn_pool is not None else "gap"
        assert pool == bv.pool_type and (model.cls_token is not None) == (pool == "tok"), arch
        assert isinstance(model.fc_norm, torch.nn.Identity) and not model.no_embed_class, arch
        assert model.reg_token is None and isinstance(model.norm_pre, torch.nn.Identity), arch
        assert isinstance(model.blocks[0].ls1, torch.nn.Identity) and model.blocks[0].attn.qkv.bias is not None, arch


@pytest.mark.parametrize(
    "arch",
    [
        "vit_base_r50_s16_224",  # hybrid ResNet stem
        "deit_base_distilled_patch16_224",  # distillation token
        "eva02_base_patch14_224",
        "vit_base_patch16_clip_224",  # pre-norm
        "vit_small_patch14_dinov2",  # layer scale
        "vit_medium_patch16_gap_256",  # layer scale, no qkv bias
        "vit_base_patch16_rope_224",
    ],
)
def test_unsupported_architectures_raise(arch: str) -> None:
    with pytest.raises(ValueError, match=f"Unsupported timm architecture '{arch}'.*Supported: vit_"):
        vit_kwargs_from_timm_config(_legacy_config(arch))


@pytest.mark.parametrize(
    "model_args,match",
    [
        ({"global_pool": "avg", "class_token": False}, "fc_norm"),  # timm's fc_norm default for 'avg'
        ({"global_pool": "avg", "class_token": False, "fc_norm": True}, "fc_norm"),
        ({"global_pool": "avg", "fc_norm": False}, "class_token=True"),
        ({"init_values": 1e-5}, "init_values"),
        ({"act_layer": "quick_gelu"}, "act_layer"),
        ({"norm_layer": "rmsnorm"}, "norm_layer"),
    ],
)
def test_unrepresentable_model_args_raise(model_args: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        vit_kwargs_from_timm_config({**_legacy_config("vit_base_patch16_224"), "model_args": model_args})


def test_model_args_win_over_architecture_defaults() -> None:
    cfg = {
        **_legacy_config("vit_base_patch16_224", num_classes=10),
        "model_args": {"img_size": [64, 48], "depth": 6, "global_pool": "map", "class_token": False, "drop_rate": 0.1},
    }
    kw = vit_kwargs_from_timm_config(cfg)
    assert kw == {
        **{"width": 768, "depth": 6, "mlp_dim": 3072, "num_heads": 12, "patch_size": (16, 16)},
        **{"pool_type": "map", "num_classes": 10, "approximate_gelu": False, "image_size": (64, 48)},
    }


# --------------------------------------------------------------------------- errors


def test_rep_size_has_no_timm_counterpart() -> None:
    kw: dict[str, Any] = {"variant": "Ti/16", "pool_type": "gap", "num_classes": 10, "rep_size": True}
    params = _bv_random_params(create_model(**kw), seed=8)
    with pytest.raises(ValueError, match="pre_logits.*rep_size"):
        params_to_timm(params, num_heads=3)
    with pytest.raises(ValueError, match="rep_size"):
        timm_model_args(kw, image_size=32)


def test_wrong_num_heads_raises() -> None:
    params = _bv_random_params(_case("Ti/16", "gap")[1], seed=9)
    with pytest.raises(ValueError, match="num_heads=4"):
        params_to_timm(params, num_heads=4)


@pytest.mark.parametrize(
    "extra,match",
    [
        ({"global_pool": "avg", "class_token": False}, "fc_norm"),  # timm's default fc_norm for 'avg'
        ({"reg_tokens": 2}, "register tokens"),
        ({"init_values": 1e-5}, "layer scale"),
        ({"pre_norm": True}, "pre_norm"),
    ],
)
def test_timm_parts_bv_lacks_raise(extra: dict[str, Any], match: str) -> None:
    kwargs = {"img_size": 32, "depth": 1, "num_classes": 10, **extra}
    skeleton = _timm_skeleton("vit_tiny_patch16_224", kwargs)
    state_dict = {k: np.zeros(v.shape, np.float32) for k, v in skeleton.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        timm_to_params(state_dict, num_heads=3)

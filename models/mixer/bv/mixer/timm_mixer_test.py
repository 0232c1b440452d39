"""bv <-> timm MLP-Mixer: logits parity with real timm both ways, timm Hub folders both ways, configs, errors."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
import safetensors.numpy
import timm
import torch
from timm.layers import get_act_layer
from timm.models import save_for_hf
from timm.models.mlp_mixer import MlpMixer

from bv.core.hub import ConfigFormatError, HubConfig
from bv.core.tree import flatten_with_names, map_with_names
from bv.mixer import Mixer, create_model
from bv.mixer.timm_convert import (
    mixer_kwargs_from_timm_config,
    params_to_timm,
    timm_mixer_args,
    timm_model_args,
    timm_preprocessing,
    timm_to_params,
)

IMAGES = np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
TOL = 1e-4  # max abs logits difference, fp32
SMALL: dict[str, Any] = {
    "hidden_dim": 64,
    "num_blocks": 2,
    "tokens_mlp_dim": 24,
    "channels_mlp_dim": 96,
    "patch_size": 8,
}


# --------------------------------------------------------------------------- helpers


class _Noise:
    """Cheap i.i.d. N(0, 1) draws: a random slice of one pre-drawn pool (B/16 has 60M weights to fill)."""

    def __init__(self, seed: int, pool: int = 1 << 22) -> None:
        self._rng = np.random.default_rng(seed)
        self._pool = self._rng.standard_normal(pool, dtype=np.float32)

    def __call__(self, shape: tuple[int, ...], scale: float, loc: float = 0.0) -> np.ndarray:
        size = int(np.prod(shape))
        start = int(self._rng.integers(0, self._pool.size - size + 1))
        return (self._pool[start : start + size] * np.float32(scale) + np.float32(loc)).reshape(shape)


def _bv_random_params(model: Any, seed: int) -> Any:
    """Random, all non-zero bv params (the initialisers give zero biases and head) without compiling init."""
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), IMAGES)["params"]
    noise = _Noise(seed)

    def fill(name: str, leaf: Any) -> np.ndarray:
        shape = tuple(leaf.shape)
        if name.endswith("scale"):
            return noise(shape, 0.1, loc=1.0)
        if name.endswith("kernel"):
            return noise(shape, int(np.prod(shape[:-1])) ** -0.5)
        return noise(shape, 0.1)

    return map_with_names(fill, abstract)


@functools.lru_cache
def _compiled_apply(model: Any) -> Any:
    """One cheap (unoptimised) compile per model: on CPU compiling, not running, dominates these tests."""
    return jax.jit(model.apply, compiler_options={"xla_backend_optimization_level": 0})


def _bv_logits(model: Any, params: Any) -> np.ndarray:
    logits, _ = _compiled_apply(model)({"params": params}, IMAGES)
    return np.asarray(logits)


def _timm_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """timm_mixer_args names the activation; timm's MlpMixer takes the class."""
    if "act_layer" in kwargs:
        return {**kwargs, "act_layer": get_act_layer(kwargs["act_layer"])}
    return kwargs


def _timm_skeleton(name: str | None, kwargs: dict[str, Any]) -> torch.nn.Module:
    """The timm model without weights (meta device): building it costs next to nothing.

    ``name`` None builds timm's MlpMixer class directly (any size); else the registered architecture.
    """
    if name is None:
        return MlpMixer(**_timm_kwargs(kwargs), device="meta")
    return timm.create_model(name, pretrained=False, device="meta", **_timm_kwargs(kwargs))


def _timm_with(name: str | None, kwargs: dict[str, Any], state_dict: dict[str, np.ndarray]) -> torch.nn.Module:
    model = _timm_skeleton(name, kwargs)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True, assign=True)
    return model.eval()


def _timm_random_state_dict(name: str | None, kwargs: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    noise = _Noise(seed)
    out = {}
    for key, value in _timm_skeleton(name, kwargs).state_dict().items():
        shape = tuple(value.shape)
        if "norm" in key and key.endswith("weight"):
            out[key] = noise(shape, 0.1, loc=1.0)
        elif key.endswith("weight"):
            out[key] = noise(shape, int(np.prod(shape[1:])) ** -0.5)
        else:
            out[key] = noise(shape, 0.1)
    return out


def _timm_logits(model: torch.nn.Module, images: np.ndarray = IMAGES) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@functools.lru_cache
def _case(approximate_gelu: bool, size: str) -> tuple[Any, dict[str, Any]]:
    """(bv model, timm MlpMixer args) of Mixer-B/16 or a small Mixer, 10 classes, 32 px."""
    kw: dict[str, Any] = {"variant": "B/16"} if size == "B/16" else dict(SMALL)
    kw.update(num_classes=10, approximate_gelu=approximate_gelu)
    return create_model(**kw), timm_mixer_args(kw, image_size=32)


CASES = [(False, "B/16"), (True, "small")]


# --------------------------------------------------------------------------- parity with real timm


@pytest.mark.parametrize("approximate_gelu,size", CASES)
def test_bv_to_timm_same_logits(approximate_gelu: bool, size: str) -> None:
    model, timm_kw = _case(approximate_gelu, size)
    assert ("act_layer" in timm_kw) == approximate_gelu
    params = _bv_random_params(model, seed=1)
    timm_model = _timm_with(None, timm_kw, params_to_timm(params))
    expected = _bv_logits(model, params)
    assert expected.shape == (2, 10) and np.abs(expected).max() > 0.1  # a live head, not zeros
    assert _max_diff(_timm_logits(timm_model), expected) <= TOL


@pytest.mark.parametrize("approximate_gelu,size", CASES)
def test_timm_to_bv_same_logits(approximate_gelu: bool, size: str) -> None:
    model, timm_kw = _case(approximate_gelu, size)
    state_dict = _timm_random_state_dict(None, timm_kw, seed=2)
    expected = _timm_logits(_timm_with(None, timm_kw, state_dict))
    assert np.abs(expected).max() > 0.1
    assert _max_diff(_bv_logits(model, timm_to_params(state_dict)), expected) <= TOL


def test_gelu_choice_matters_at_this_tolerance() -> None:
    # Guards the parity tests: in Mixer-B/16 (random weights) the two activations differ by ~4e-4, which TOL
    # catches; the conversions themselves agree to ~1e-6.
    _, args = _case(False, "B/16")
    state_dict = _timm_random_state_dict(None, args, seed=3)
    exact = _timm_logits(_timm_with(None, args, state_dict))
    tanh = _timm_logits(_timm_with(None, {**args, "act_layer": "gelu_tanh"}, state_dict))
    assert _max_diff(exact, tanh) > 2 * TOL


def test_model_args_name_the_registered_architecture() -> None:
    _, args = _case(False, "B/16")
    assert args == {
        "img_size": (32, 32),
        "patch_size": 16,
        "num_blocks": 12,
        "embed_dim": 768,
        "mlp_ratio": (0.5, 4.0),
        "num_classes": 10,
        "in_chans": 3,
        "global_pool": "avg",
    }
    # The registered name fixes patch, depth and width; timm.create_model builds the same model.
    name, kwargs = timm_model_args({"variant": "B/16", "num_classes": 10, "approximate_gelu": False}, image_size=32)
    assert name == "mixer_b16_224" and kwargs == {
        k: v for k, v in args.items() if k not in ("patch_size", "num_blocks", "embed_dim")
    }
    registered = {k: v.shape for k, v in _timm_skeleton(name, kwargs).state_dict().items()}
    assert registered == {k: v.shape for k, v in _timm_skeleton(None, args).state_dict().items()}
    assert timm_model_args({"variant": "L/32"}, image_size=224)[0] == "mixer_l32_224"
    with pytest.raises(ValueError, match="no registered Mixer.*timm_mixer_args"):
        timm_model_args({"variant": "H/14"}, image_size=224)


# --------------------------------------------------------------------------- Hub folders


def test_timm_save_for_hf_folder_loads_with_equal_logits(tmp_path: Path) -> None:
    """A folder written by timm's own save_for_hf (stock mixer_s16_224, exact GELU) -> Mixer.from_pretrained."""
    model_args = {"img_size": 32, "num_classes": 10}
    state_dict = _timm_random_state_dict("mixer_s16_224", model_args, seed=4)
    reference = _timm_with("mixer_s16_224", model_args, state_dict)
    save_for_hf(reference, str(tmp_path), model_args=model_args, safe_serialization=True)

    cfg = json.loads((tmp_path / "config.json").read_text())
    assert mixer_kwargs_from_timm_config(cfg) == {
        "variant": "S/16",
        "num_classes": 10,
        "approximate_gelu": False,
        "image_size": (32, 32),
        "channels": 3,
    }
    assert timm_preprocessing(cfg) == {
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
    }

    model = Mixer.from_pretrained(str(tmp_path))
    assert model.config.model == {"variant": "S/16", "approximate_gelu": False}
    assert model.config.resolution == 32 and model.config.num_classes == 10
    loaded = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
    assert _max_diff(_bv_logits(model.module, timm_to_params(loaded)), _timm_logits(reference)) <= TOL
    assert _max_diff(_bv_logits(model.module, model.params), _timm_logits(reference)) <= TOL


def test_timm_loads_a_folder_written_by_bv(tmp_path: Path) -> None:
    """Mixer-S/32 at 64 px (4 tokens): bv -> save_timm -> timm "local-dir:" and Mixer.from_pretrained."""
    images = np.random.RandomState(1).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    config = HubConfig(
        model_name="mixer", model={"variant": "S/32", "approximate_gelu": False}, num_classes=7, resolution=64
    )
    module = create_model(7, **config.model)
    abstract = jax.eval_shape(module.init, jax.random.key(0), images)["params"]
    noise = _Noise(5)
    params = map_with_names(lambda n, s: noise(tuple(s.shape), 0.05, loc=1.0 if n.endswith("scale") else 0.0), abstract)
    model = Mixer(config, params)
    expected, _ = jax.jit(module.apply, compiler_options={"xla_backend_optimization_level": 0})(
        {"params": params}, images
    )
    model.save_timm(str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["architecture"] == "mixer_s32_224"
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    assert _max_diff(_timm_logits(loaded, images), np.asarray(expected)) <= TOL

    back = Mixer.from_pretrained(str(tmp_path))
    assert back.config.model == {"variant": "S/32", "approximate_gelu": False} and back.config.resolution == 64
    for (name, a), (_, b) in zip(flatten_with_names(back.params), flatten_with_names(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)

    # The tanh GELU is written only when asked; timm then needs the activation passed in.
    tanh = Mixer(config.replace(model={"variant": "S/32"}), params)
    with pytest.raises(ValueError, match="allow_gelu_mismatch=True"):
        tanh.save_timm(str(tmp_path / "tanh"))
    tanh.save_timm(str(tmp_path / "tanh"), allow_gelu_mismatch=True)
    act = get_act_layer("gelu_tanh")
    loaded = timm.create_model(f"local-dir:{tmp_path / 'tanh'}", pretrained=True, act_layer=act).eval()
    tanh_logits, _ = jax.jit(tanh.module.apply, compiler_options={"xla_backend_optimization_level": 0})(
        {"params": params}, images
    )
    assert _max_diff(_timm_logits(loaded, images), np.asarray(tanh_logits)) <= TOL


# --------------------------------------------------------------------------- configs and errors


@pytest.mark.parametrize(
    "arch,variant",
    [("mixer_s32_224", "S/32"), ("mixer_b16_224.goog_in21k_ft_in1k", "B/16"), ("mixer_l16_224.goog_in21k", "L/16")],
)
def test_architecture_names_agree_with_timm(arch: str, variant: str) -> None:
    kw = mixer_kwargs_from_timm_config({"architecture": arch, "num_classes": 0})
    assert kw["variant"] == variant and kw["image_size"] == (224, 224)
    bv = create_model(variant=variant)
    model = timm.create_model(arch.split(".")[0], pretrained=False, device="meta", num_classes=0)
    block = model.blocks[0]
    assert (model.embed_dim, len(model.blocks)) == (bv.hidden_dim, bv.num_blocks)
    assert (block.mlp_tokens.fc1.out_features, block.mlp_channels.fc1.out_features) == (
        bv.tokens_mlp_dim,
        bv.channels_mlp_dim,
    )
    assert tuple(model.stem.patch_size) == bv.patch_size


def test_explicit_sizes_from_model_args() -> None:
    cfg = {
        "architecture": "mixer_b16_224",
        "num_classes": 5,
        "model_args": {"img_size": 64, "patch_size": 8, "embed_dim": 64, "num_blocks": 2, "mlp_ratio": [0.375, 1.5]},
    }
    assert mixer_kwargs_from_timm_config(cfg) == {
        "hidden_dim": 64,
        "num_blocks": 2,
        "tokens_mlp_dim": 24,
        "channels_mlp_dim": 96,
        "patch_size": (8, 8),
        "num_classes": 5,
        "approximate_gelu": False,
        "image_size": (64, 64),
        "channels": 3,
    }


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"architecture": "resmlp_12_224"}, "not an MLP-Mixer"),
        ({"architecture": "gmixer_12_224"}, "not an MLP-Mixer"),
        ({"architecture": "mixer_b16_224", "model_args": {"stem_norm": True}}, "stem_norm=True"),
        ({"architecture": "mixer_b16_224", "model_args": {"global_pool": ""}}, "global_pool=''"),
        ({"architecture": "mixer_b16_224", "model_args": {"block_layer": "x"}}, "no counterpart"),
        ({"num_classes": 3}, "no 'architecture'"),
    ],
)
def test_unrepresentable_timm_configs_raise(cfg: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mixer_kwargs_from_timm_config(cfg)


def test_unrepresentable_state_dicts_raise(tmp_path: Path) -> None:
    _, timm_kw = _case(True, "small")
    state_dict = _timm_random_state_dict(None, timm_kw, seed=6)
    with pytest.raises(ValueError, match="entries a plain MlpMixer does not"):
        timm_to_params({**state_dict, "blocks.0.ls1": np.zeros(64, np.float32)})
    with pytest.raises(ValueError, match="stem_norm=True"):
        timm_to_params({**state_dict, "stem.norm.weight": np.zeros(64, np.float32)})
    resmlp = timm.create_model("resmlp_12_224", pretrained=False, device="meta")
    with pytest.raises(ValueError, match="Not a timm MlpMixer"):
        timm_to_params({k: np.zeros(v.shape, np.float32) for k, v in resmlp.state_dict().items()})
    # Through from_pretrained such a folder is a config error.
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resmlp_12_224", "num_classes": 10}))
    safetensors.numpy.save_file(
        {"stem.proj.weight": np.zeros((4, 3, 16, 16), np.float32)}, str(tmp_path / "model.safetensors")
    )
    with pytest.raises(ConfigFormatError, match="not an MLP-Mixer"):
        Mixer.from_pretrained(str(tmp_path))

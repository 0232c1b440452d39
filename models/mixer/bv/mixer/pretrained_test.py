"""bv.mixer.Mixer as a Hub model: bv folders, big_vision .npz files, model_init, and the errors users meet."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bv.core.hub import ConfigFormatError, HubConfig, ParamsMismatchError
from bv.core.hub.npz import load_npz, save_npz
from bv.core.model_init import load_pretrained
from bv.core.tree import flatten_with_names
from bv.mixer import Mixer, create_model

TINY: dict[str, Any] = {"hidden_dim": 16, "num_blocks": 2, "tokens_mlp_dim": 8, "channels_mlp_dim": 32, "patch_size": 8}


def _flat(params: Any) -> dict[str, np.ndarray]:
    return {name: np.asarray(leaf) for name, leaf in flatten_with_names(params)}


def _assert_same_params(a: Any, b: Any) -> None:
    fa, fb = _flat(a), _flat(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name].dtype == fb[name].dtype, name
        np.testing.assert_array_equal(fa[name], fb[name], err_msg=name)


@functools.cache
def _tiny() -> Mixer:
    """A tiny Mixer whose every parameter (head included) is random and non-zero."""
    config = HubConfig(model_name="mixer", model=dict(TINY), num_classes=5, resolution=32, labels=list("abcde"))
    shapes = jax.eval_shape(create_model(5, **TINY).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    rng = np.random.default_rng(0)
    return Mixer(config, jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes))


def test_save_and_load_pretrained_is_bitwise(tmp_path: Path) -> None:
    model = _tiny()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_name"] == "mixer" and config["package"] == "bv-mixer"
    assert config["model"]["hidden_dim"] == 16 and config["labels"] == list("abcde")
    loaded = Mixer.from_pretrained(tmp_path)
    assert type(loaded) is Mixer and loaded.config.resolution == 32 and loaded.labels == list("abcde")
    _assert_same_params(loaded.params, model.params)


def test_new_head_on_load_keeps_the_body(tmp_path: Path) -> None:
    _tiny().save_pretrained(tmp_path)
    loaded = Mixer.from_pretrained(tmp_path, num_classes=3)
    assert loaded.params["head"]["kernel"].shape == (16, 3) and loaded.labels is None
    body = {k: v for k, v in loaded.params.items() if k != "head"}
    _assert_same_params(body, {k: v for k, v in _tiny().params.items() if k != "head"})


def test_other_resolution_is_refused_with_the_token_shapes(tmp_path: Path) -> None:
    _tiny().save_pretrained(tmp_path)
    with pytest.raises(ParamsMismatchError, match="token_mixing/Dense_0/kernel"):
        Mixer.from_pretrained(tmp_path, resolution=64)


def test_big_vision_npz_round_trip(tmp_path: Path) -> None:
    model = _tiny()
    path = str(tmp_path / "mixer.npz")
    model.save_big_vision(path)
    flat = load_npz(path)
    assert "MixerBlock_1/token_mixing/Dense_0/kernel" in flat and "pre_head_layer_norm/scale" in flat
    loaded = Mixer.from_pretrained(path)
    assert loaded.config.resolution == 32 and loaded.config.num_classes == 5
    assert loaded.config.model == {**{k: v for k, v in TINY.items() if k != "patch_size"}, "patch_size": [8, 8]}
    _assert_same_params(loaded.params, model.params)

    # A training checkpoint keeps the params under "params/" beside the optimizer state.
    save_npz(tmp_path / "train.npz", {"params": model.params, "opt": {"mu": {"x": np.zeros(3)}}})
    _assert_same_params(Mixer.from_pretrained(str(tmp_path / "train.npz")).params, model.params)


def test_bfloat16_npz_loads_as_float32(tmp_path: Path) -> None:
    model = _tiny()
    model.save_big_vision(str(tmp_path / "bf16.npz"), dtype="bfloat16")
    loaded = Mixer.from_pretrained(str(tmp_path / "bf16.npz"))
    kernel = np.asarray(loaded.params["head"]["kernel"])
    assert kernel.dtype == np.float32
    expected = np.asarray(model.params["head"]["kernel"]).astype("bfloat16").astype(np.float32)
    np.testing.assert_array_equal(kernel, expected)


def test_npz_of_a_named_variant_is_recognised(tmp_path: Path) -> None:
    # Mixer-S/32 at 64 px (4 tokens), with zeros: shapes are all that matter here.
    shapes = jax.eval_shape(create_model(10, variant="S/32").init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    save_npz(tmp_path / "s32.npz", jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes["params"]))
    config, _ = Mixer.from_big_vision(load_npz(tmp_path / "s32.npz"), variant="S/32")
    assert config.model == {"variant": "S/32"} and config.resolution == 64 and config.num_classes == 10
    with pytest.raises(ConfigFormatError, match="not a Mixer-B/32: its hidden_dim is 512"):
        Mixer.from_big_vision(load_npz(tmp_path / "s32.npz"), variant="B/32")


def test_npz_that_is_not_a_mixer_is_refused(tmp_path: Path) -> None:
    save_npz(tmp_path / "vit.npz", {"embedding": {"kernel": np.zeros((2, 2, 3, 4))}, "Transformer": {"x": np.zeros(1)}})
    with pytest.raises(ConfigFormatError, match="Not MLP-Mixer params"):
        Mixer.from_pretrained(str(tmp_path / "vit.npz"))


def test_model_init_loads_npz_and_keeps_a_fresh_head(tmp_path: Path) -> None:
    model = _tiny()
    model.save_big_vision(str(tmp_path / "mixer.npz"))
    config = ml_collections.ConfigDict({"model_name": "mixer", "model": dict(TINY), "num_classes": 3})
    module = create_model(3, **TINY)
    fresh = jax.tree.map(
        lambda s: np.full(s.shape, 7.0, s.dtype),
        jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"],
    )
    params = load_pretrained(str(tmp_path / "mixer.npz"), fresh, dont_load=["head/.*"], config=config)
    assert np.all(np.asarray(params["head"]["kernel"]) == 7.0)
    _assert_same_params(
        {k: v for k, v in params.items() if k != "head"}, {k: v for k, v in model.params.items() if k != "head"}
    )


def test_timm_folder_written_by_bv_loads_back(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timm has no registered Mixer with embed_dim=16"):
        _tiny().save_timm(str(tmp_path / "tiny"))
    # Mixer-S/32 at 64 px (4 tokens), zeros but for a random head: only names and shapes matter here.
    config = HubConfig(model_name="mixer", model={"variant": "S/32"}, num_classes=3, resolution=64, labels=list("xyz"))
    shapes = jax.eval_shape(create_model(3, variant="S/32").init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes["params"])
    params["head"]["kernel"] = np.random.default_rng(0).normal(size=(512, 3)).astype(np.float32)
    model = Mixer(config, params)
    with pytest.raises(ValueError, match="allow_gelu_mismatch"):
        model.save_timm(str(tmp_path / "s32"))
    model.save_timm(str(tmp_path / "s32"), allow_gelu_mismatch=True)
    timm_config = json.loads((tmp_path / "s32" / "config.json").read_text())
    assert timm_config["architecture"] == "mixer_s32_224" and timm_config["label_names"] == list("xyz")
    assert timm_config["model_args"] == {
        "img_size": [64, 64],
        "mlp_ratio": [0.5, 4.0],
        "in_chans": 3,
        "global_pool": "avg",
    }
    loaded = Mixer.from_pretrained(str(tmp_path / "s32"))
    assert loaded.config.model == {"variant": "S/32", "approximate_gelu": False}  # what timm will compute
    assert loaded.config.resolution == 64 and loaded.labels == list("xyz")
    assert loaded.config.pp.startswith("decode|resize_small(73, method='bicubic')|central_crop(64)")
    _assert_same_params(loaded.params, params)

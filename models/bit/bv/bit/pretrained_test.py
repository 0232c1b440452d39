"""Tests for BiT / BiTPaper as Hub models: folder and big_vision .npz round trips, layouts, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
import pytest

from bv.bit import BiT, BiTPaper, big_vision_npz
from bv.core.hub import ConfigFormatError, HubConfig, PretrainedModel, load_model
from bv.core.hub.npz import load_npz, save_npz
from bv.core.tree import flatten_with_names, map_with_names


def _random_params(cls: type[PretrainedModel], config: HubConfig, seed: int) -> Any:
    """Random, all non-zero params of the model ``config`` describes, without compiling its init."""
    module = cls.build_module(config)
    shape = (1, config.resolution, config.resolution, config.channels)
    abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(shape, np.float32))["params"]
    rng = np.random.default_rng(seed)
    return map_with_names(lambda n, leaf: rng.normal(size=leaf.shape).astype(np.float32), abstract)


def _model(cls: type[PretrainedModel], seed: int = 0, **model: Any) -> Any:
    config = HubConfig(
        model_name=cls.model_name, model=model, num_classes=10, resolution=32, pp="decode|value_range(-1, 1)"
    )
    return cls(config, _random_params(cls, config, seed))


def _flat(params: Any) -> dict[str, np.ndarray]:
    return {n: np.asarray(v) for n, v in flatten_with_names(params)}


def _assert_bitwise(a: Any, b: Any) -> None:
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        assert fa[name].dtype == fb[name].dtype and np.array_equal(fa[name], fb[name]), name


@pytest.mark.parametrize(
    "cls, model",
    [
        (BiT, {"depth": 26, "width": 0.5}),
        (BiTPaper, {"depth": [1, 2, 1], "width": 1, "ws_eps": 1e-8, "root_pool_pad": "zero"}),
    ],
)
def test_save_and_from_pretrained_round_trip_bitwise(tmp_path: Path, cls: type[PretrainedModel], model: dict) -> None:
    original = _model(cls, seed=1, **model)
    original.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(str(tmp_path))
    _assert_bitwise(original.params, loaded.params)
    assert loaded.config.model == original.config.model and loaded.config.num_classes == 10
    assert loaded.config.package == "bv-bit" and loaded.module == original.module
    picked = load_model(str(tmp_path))  # the class comes from config.json
    assert type(picked) is cls
    _assert_bitwise(original.params, picked.params)


@pytest.mark.parametrize("cls, depth, width", [(BiT, 26, 0.5), (BiTPaper, [1, 2, 1], 1.5)])
def test_big_vision_npz_round_trip_bitwise_and_inferred(
    tmp_path: Path, cls: type[PretrainedModel], depth: Any, width: float
) -> None:
    original = _model(cls, seed=2, depth=depth, width=width)
    path = tmp_path / "ckpt.npz"
    original.save_big_vision(str(path))
    flat = load_npz(path)
    assert set(flat) == set(_flat(original.params))  # big_vision's names, unchanged
    loaded = cls.from_pretrained(str(path))
    _assert_bitwise(original.params, loaded.params)
    assert loaded.config.model["depth"] == depth and loaded.config.model["width"] == width
    assert loaded.config.num_classes == 10 and "resize_small(256)|central_crop(224)" in loaded.config.pp


def test_bfloat16_npz_and_training_checkpoint_wrapper(tmp_path: Path) -> None:
    original = _model(BiT, seed=3, depth=[1, 1], width=0.5)
    wrapped = {f"params/{k}": v for k, v in _flat(original.params).items()}
    wrapped["opt/0/mu/conv_root/kernel"] = np.zeros(3, np.float32)  # optimizer state is ignored
    save_npz(tmp_path / "train.npz", wrapped, dtype="bfloat16")
    loaded = BiT.from_pretrained(str(tmp_path / "train.npz"))
    expected = map_with_names(lambda n, v: np.asarray(v).astype(ml_dtypes.bfloat16).astype(np.float32), original.params)
    _assert_bitwise(expected, loaded.params)


def test_old_v1_checkpoints_with_unsqueezed_group_norm_params_load() -> None:
    flat = _flat(_model(BiT, depth=[1, 1], width=0.5).params)
    old = {k: (v.reshape(1, 1, 1, -1) if "/gn" in f"/{k}" else v) for k, v in flat.items()}
    assert old["gn_root/scale"].shape == (1, 1, 1, 32)
    _assert_bitwise(flat, big_vision_npz.params_from_big_vision(old, paper=False))


def _to_original_bit(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """bv bit_paper names -> the original BiT release's TF names (written out independently of the loader)."""
    tf: dict[str, np.ndarray] = {}
    for name, value in flat.items():
        parts = name.split("/")
        if parts[0] == "root_block":
            tf["resnet/root_block/standardized_conv2d/kernel"] = value
        elif parts[0] == "norm-pre-head":
            tf[f"resnet/group_norm/{'gamma' if parts[1] == 'scale' else 'beta'}"] = value.reshape(-1)
        elif parts[0] == "head":
            tf[f"resnet/head/conv2d/{parts[1]}"] = value[None, None] if parts[1] == "kernel" else value
        elif parts[2] == "conv_proj":
            tf[f"resnet/{parts[0]}/{parts[1]}/a/proj/standardized_conv2d/kernel"] = value
        else:
            abc = "abc"[int(parts[2][-1]) - 1]
            if parts[2].startswith("conv"):
                tf[f"resnet/{parts[0]}/{parts[1]}/{abc}/standardized_conv2d/kernel"] = value
            else:
                tf[f"resnet/{parts[0]}/{parts[1]}/{abc}/group_norm/{'gamma' if parts[3] == 'scale' else 'beta'}"] = (
                    value.reshape(-1)
                )
    return tf


def test_original_bit_release_layout_loads_into_bit_paper(tmp_path: Path) -> None:
    original = _model(BiTPaper, seed=4, depth=[2, 1], width=1)
    tf = _to_original_bit(_flat(original.params))
    tf["resnet/block1/unit02/b/standardized_conv2d_1/kernel"] = tf.pop(
        "resnet/block1/unit02/b/standardized_conv2d/kernel"
    )
    assert len(tf) == len(_flat(original.params))
    save_npz(tmp_path / "BiT-M-R26x1.npz", tf)
    loaded = BiTPaper.from_pretrained(str(tmp_path / "BiT-M-R26x1.npz"))
    _assert_bitwise(original.params, loaded.params)
    assert loaded.config.model == {"depth": [2, 1], "width": 1}


def test_variant_is_checked_against_the_weights(tmp_path: Path) -> None:
    _model(BiT, depth=26, width=0.5).save_big_vision(str(tmp_path / "r26.npz"))
    assert BiT.from_pretrained(str(tmp_path / "r26.npz"), variant="R26x0.5").config.model == {"depth": 26, "width": 0.5}
    with pytest.raises(ConfigFormatError, match="not a BiT-R50x1: it has depth=26 and width=0.5"):
        BiT.from_pretrained(str(tmp_path / "r26.npz"), variant="R50x1")
    with pytest.raises(ConfigFormatError, match="expected 'R<depth>x<width>'"):
        BiT.from_pretrained(str(tmp_path / "r26.npz"), variant="B/16")
    with pytest.raises(ConfigFormatError, match="Unknown BiT variant 'R34x1'.*26, 50, 101, 152, 200"):
        BiT.from_pretrained(str(tmp_path / "r26.npz"), variant="R34x1")


def test_the_wrong_family_is_named_in_the_error(tmp_path: Path) -> None:
    _model(BiT, depth=[1, 1], width=0.5).save_big_vision(str(tmp_path / "v1.npz"))
    _model(BiTPaper, depth=[1, 1], width=0.5).save_big_vision(str(tmp_path / "v2.npz"))
    with pytest.raises(ConfigFormatError, match="load it with bv.bit.BiT"):
        BiTPaper.from_pretrained(str(tmp_path / "v1.npz"))
    with pytest.raises(ConfigFormatError, match="load it with bv.bit.BiTPaper"):
        BiT.from_pretrained(str(tmp_path / "v2.npz"))


def test_resolution_and_model_overrides_keep_every_weight(tmp_path: Path) -> None:
    """ResNets have no resolution-bound weights; the timm-matching fields can be switched on at load time."""
    original = _model(BiTPaper, seed=5, depth=[1, 1], width=0.5)
    original.save_pretrained(tmp_path)
    loaded = BiTPaper.from_pretrained(str(tmp_path), resolution=64, ws_eps=1e-8, root_pool_pad="zero")
    assert loaded.config.resolution == 64 and loaded.module_kwargs()["root_pool_pad"] == "zero"
    _assert_bitwise(original.params, loaded.params)

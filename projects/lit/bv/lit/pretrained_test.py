"""TwoTowerModel: bv folders, big_vision two-tower .npz files, zero-shot results, clear errors."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import pytest

from bv.core.hub import ConfigFormatError, ParamsMismatchError, load_model
from bv.core.hub.npz import load_npz, save_npz
from bv.core.tree import flatten_with_names
from bv.lit import TwoTowerModel

KWARGS: dict[str, Any] = dict(
    image_model="vit",
    image=dict(variant="mu/8", head_zeroinit=False),
    text=dict(variant="mu", depth=1, vocab_size=50),
    out_dim=8,
    temperature_init=10.0,
    bias_init=-10.0,
    text_len=4,
)


@pytest.fixture(scope="module")
def model() -> TwoTowerModel:
    return TwoTowerModel.create(resolution=16, seed=1, **KWARGS)


@pytest.fixture(scope="module")
def inputs() -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (5, 16, 16, 3)))
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (3, 4), 0, 50), np.int32)
    return images, tokens


def _flat(params) -> dict[str, np.ndarray]:
    return {n: np.asarray(v) for n, v in flatten_with_names(jax.device_get(params))}


def _saved(model: TwoTowerModel, folder) -> str:
    path = str(folder / "two_towers.npz")
    model.save_big_vision(path)
    return path


def assert_bitwise_equal(a, b) -> None:
    fa, fb = _flat(a), _flat(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name].dtype == fb[name].dtype, name
        np.testing.assert_array_equal(fa[name], fb[name], err_msg=name)


def test_create_and_embed(model, inputs) -> None:
    images, tokens = inputs
    assert sorted(model.params) == ["b", "img", "t", "txt"]
    zimg, ztxt = model.embed_image(images), model.embed_text(tokens)
    assert zimg.shape == (5, 8) and ztxt.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(zimg, axis=1), 1.0, rtol=1e-5)
    assert float(np.abs(zimg).max()) > 0 and float(np.abs(ztxt).max()) > 0
    zi, zt, out = model(images, tokens)
    np.testing.assert_array_equal(zi, zimg)
    np.testing.assert_array_equal(zt, ztxt)
    np.testing.assert_allclose(out["t"], [10.0], rtol=1e-6)
    np.testing.assert_allclose(model.logits(images, tokens), zimg @ ztxt.T * 10.0 - 10.0, rtol=1e-5, atol=1e-5)
    assert "img/pre_logits" in model.intermediates(images)
    with pytest.raises(ValueError, match="length 4"):
        model.embed_text(tokens[:, :3])
    with pytest.raises(ValueError, match="NHWC"):
        model.embed_image(images[0])


def test_save_pretrained_roundtrip(model, inputs, tmp_path) -> None:
    images, tokens = inputs
    model.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "README.md"} <= set(os.listdir(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_name"] == "two_towers" and config["package"] == "bv-lit"
    loaded = TwoTowerModel.from_pretrained(str(tmp_path))
    assert_bitwise_equal(model.params, loaded.params)
    np.testing.assert_array_equal(model.embed_image(images), loaded.embed_image(images))
    np.testing.assert_array_equal(model.embed_text(tokens), loaded.embed_text(tokens))
    np.testing.assert_array_equal(model.zero_shot(images, tokens), loaded.zero_shot(images, tokens))
    assert type(load_model(str(tmp_path))) is TwoTowerModel  # the registry's hub_class


def test_big_vision_npz_roundtrip(model, inputs, tmp_path) -> None:
    images, tokens = inputs
    path = _saved(model, tmp_path)
    names = set(load_npz(path))
    assert {"t", "b", "txt/Embed_0/embedding", "txt/pos_embedding", "txt/head/kernel"} <= names
    assert "img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" in names
    assert "txt/Encoder_0/encoderblock_0/LayerNorm_0/scale" in names

    explicit = TwoTowerModel.from_pretrained(path, resolution=16, **KWARGS)
    assert_bitwise_equal(model.params, explicit.params)
    before = model.zero_shot(images, tokens)
    np.testing.assert_array_equal(before, explicit.zero_shot(images, tokens))
    np.testing.assert_array_equal(model.logits(images, tokens), explicit.logits(images, tokens))

    # Everything but the pooling is in the shapes: the inferred config gives the same model.
    inferred = TwoTowerModel.from_pretrained(path)
    assert inferred.config.resolution == 16 and inferred.text_len == 4
    assert inferred.config.model["text"]["vocab_size"] == 50
    assert_bitwise_equal(model.params, inferred.params)
    np.testing.assert_array_equal(before, inferred.zero_shot(images, tokens))

    # A training checkpoint: params under params/, optimizer state beside them.
    wrapped = str(tmp_path / "ckpt.npz")
    arrays = load_npz(path)
    save_npz(wrapped, {**{f"params/{k}": v for k, v in arrays.items()}, "opt/state/mu": np.zeros(3, np.float32)})
    assert_bitwise_equal(model.params, TwoTowerModel.from_pretrained(wrapped, resolution=16, **KWARGS).params)


def test_wrong_checkpoints_give_clear_errors(model, tmp_path) -> None:
    # Another text tower: a larger vocabulary and longer texts.
    arrays = dict(load_npz(_saved(model, tmp_path)))
    width = arrays["txt/Embed_0/embedding"].shape[1]
    arrays["txt/Embed_0/embedding"] = np.zeros((60, width), np.float32)
    arrays["txt/pos_embedding"] = np.zeros((1, 6, width), np.float32)
    path = str(tmp_path / "other.npz")
    save_npz(path, arrays)
    with pytest.raises(ParamsMismatchError) as e:
        TwoTowerModel.from_pretrained(path, resolution=16, **KWARGS)
    assert f"shape of txt/Embed_0/embedding: source (60, {width}) vs model (50, {width})" in str(e.value)
    assert f"shape of txt/pos_embedding: source (1, 6, {width}) vs model (1, 4, {width})" in str(e.value)

    vit_only = str(tmp_path / "vit.npz")
    save_npz(vit_only, {k[len("img/") :]: v for k, v in load_npz(path).items() if k.startswith("img/")})
    with pytest.raises(ConfigFormatError, match="Not a big_vision two-tower checkpoint"):
        TwoTowerModel.from_pretrained(vit_only)

    with pytest.raises(ConfigFormatError, match=r"Unknown model 'nope'.*Known model names"):
        TwoTowerModel.create(resolution=16, **{**KWARGS, "image_model": "nope"})
    folder = tmp_path / "folder"
    model.save_pretrained(folder)
    with pytest.raises(ConfigFormatError, match=r"Unknown model 'nope'.*Known model names"):
        TwoTowerModel.from_pretrained(str(folder), image_model="nope")


def test_tokenize_without_the_train_extra_names_it(model, monkeypatch: pytest.MonkeyPatch) -> None:
    from bv.core import extras

    monkeypatch.setattr(extras, "_installed", lambda module: module != "tensorflow")
    with pytest.raises(extras.MissingExtraError) as e:
        model.tokenize(["the digit seven"])
    assert "LiT's tokenize" in str(e.value) and '"bv-core[train]"' in str(e.value)

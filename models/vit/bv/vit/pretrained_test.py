"""bv.vit.ViT as a Hub model: big_vision .npz through from_pretrained and model_init, layouts, resolutions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import pytest

from bv.core.hub import ConfigFormatError, ParamsMismatchError
from bv.core.model_init import load_pretrained
from bv.pp.builder import get_preprocess_fn
from bv.vit import ViT, create_model, resample_posemb
from bv.vit.big_vision_npz import load_npz


def _images(res: int, n: int = 2) -> np.ndarray:
    return np.random.RandomState(0).uniform(-1, 1, (n, res, res, 3)).astype(np.float32)


def _train_config(res_model: dict[str, Any], num_classes: int = 10) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"model_name": "vit", "model": res_model, "num_classes": num_classes})


@pytest.fixture(scope="module")
def ti16() -> ViT:
    # Random non-zero head so that logits depend on every parameter.
    return ViT.create(variant="Ti/16", num_classes=10, resolution=224, head_zeroinit=False, seed=0)


def test_npz_export_loads_back_through_model_init_with_equal_logits(ti16: ViT, tmp_path: Path) -> None:
    ti16.save_big_vision(str(tmp_path / "ti16.npz"))
    model = create_model(10, variant="Ti/16", head_zeroinit=False)
    fresh = model.init(jax.random.PRNGKey(1), _images(224, 1))["params"]
    params = load_pretrained(str(tmp_path / "ti16.npz"), fresh, config=_train_config({"variant": "Ti/16"}))
    logits = jax.jit(model.apply)({"params": params}, _images(224))[0]
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ti16(_images(224))), rtol=0, atol=1e-6)

    # The same file through from_pretrained, with the variant checked against the weights.
    loaded = ViT.from_pretrained(str(tmp_path / "ti16.npz"), variant="Ti/16")
    assert loaded.config.resolution == 224 and loaded.config.num_classes == 10
    np.testing.assert_allclose(np.asarray(loaded(_images(224))), np.asarray(ti16(_images(224))), atol=1e-6)
    with pytest.raises(ConfigFormatError, match="not a ViT-S/16: its width is 192"):
        ViT.from_pretrained(str(tmp_path / "ti16.npz"), variant="S/16")


def test_bf16_npz_is_stored_as_void_and_loads_through_model_init(ti16: ViT, tmp_path: Path) -> None:
    ti16.save_big_vision(str(tmp_path / "bf16.npz"), dtype="bfloat16")
    with np.load(tmp_path / "bf16.npz", allow_pickle=False) as raw:
        assert raw["head/kernel"].dtype == np.dtype("V2")
    assert load_npz(str(tmp_path / "bf16.npz"))["head/kernel"].dtype.name == "bfloat16"
    model = create_model(10, variant="Ti/16")
    fresh = model.init(jax.random.PRNGKey(1), _images(224, 1))["params"]
    params = load_pretrained(str(tmp_path / "bf16.npz"), fresh, config=_train_config({"variant": "Ti/16"}))
    assert params["head"]["kernel"].dtype == np.float32
    expected = np.asarray(ti16.params["head"]["kernel"]).astype("bfloat16").astype(np.float32)
    np.testing.assert_array_equal(np.asarray(params["head"]["kernel"]), expected)


def test_model_init_resamples_the_posemb_from_224_to_384(ti16: ViT, tmp_path: Path) -> None:
    ti16.save_big_vision(str(tmp_path / "ti16.npz"))
    model = create_model(3, variant="Ti/16")
    fresh = jax.eval_shape(model.init, jax.random.PRNGKey(1), _images(384, 1))["params"]
    fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), fresh)
    params = load_pretrained(
        f"{tmp_path / 'ti16.npz'}", fresh, dont_load=["head/.*"], config=_train_config({"variant": "Ti/16"}, 3)
    )
    posemb = np.asarray(params["pos_embedding"])
    assert posemb.shape == (1, 24 * 24, 192)
    np.testing.assert_allclose(posemb, resample_posemb(np.asarray(ti16.params["pos_embedding"]), 24, 24), atol=1e-7)
    assert np.all(np.asarray(params["head"]["kernel"]) == 0)  # dont_load kept the fresh head
    with pytest.raises(ParamsMismatchError, match="shape of head/kernel"):
        load_pretrained(str(tmp_path / "ti16.npz"), fresh, config=_train_config({"variant": "Ti/16"}, 3))


def test_from_pretrained_at_a_new_resolution_and_head(tmp_path: Path) -> None:
    model = ViT.create(variant="mu/8", num_classes=5, resolution=32, seed=0)
    model.save_pretrained(tmp_path)
    bigger = ViT.from_pretrained(tmp_path, resolution=48, num_classes=3)
    assert bigger.params["pos_embedding"].shape == (1, 36, 32) and bigger(_images(48)).shape == (2, 3)
    np.testing.assert_allclose(
        np.asarray(bigger.params["pos_embedding"]), resample_posemb(np.asarray(model.params["pos_embedding"]), 6, 6)
    )


def test_scan_and_loop_layouts_load_into_each_other(tmp_path: Path) -> None:
    scanned = ViT.create(variant="mu/8", num_classes=5, resolution=32, scan=True, head_zeroinit=False, seed=4)
    scanned.save_pretrained(tmp_path)
    assert "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" in scanned.state_dict()
    loop = ViT.from_pretrained(tmp_path, scan=False)
    assert "encoderblock_0" in loop.params["Transformer"]
    np.testing.assert_allclose(np.asarray(loop(_images(32))), np.asarray(scanned(_images(32))), atol=1e-5)


def test_timm_folder_written_by_bv_loads_back(tmp_path: Path) -> None:
    for pool in ("gap", "tok"):
        model = ViT.create(variant="mu/8", num_classes=5, resolution=32, pool_type=pool, head_zeroinit=False, seed=2)
        model.save_timm(str(tmp_path / pool))
        loaded = ViT.from_pretrained(str(tmp_path / pool))
        assert loaded.config.resolution == 32 and loaded.config.model["pool_type"] == pool
        get_preprocess_fn(loaded.pp)  # a valid pp string (resize, crop, timm's mean and std)
        np.testing.assert_allclose(np.asarray(loaded(_images(32))), np.asarray(model(_images(32))), atol=1e-5)

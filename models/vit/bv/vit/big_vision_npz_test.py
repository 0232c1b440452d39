"""Tests for reading and writing big_vision .npz ViT checkpoints."""

from __future__ import annotations

import os
import pickle
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest

import bv.vit
from bv.core.tree import flatten_with_names
from bv.vit import big_vision_npz as bvnpz
from bv.vit.model import pyloop_to_scan, resample_posemb

BF16 = np.dtype(ml_dtypes.bfloat16)
KW = {"variant": "mu", "depth": 2, "patch_size": (8, 8), "head_zeroinit": False}


def _random_like(params, seed):
    """Every leaf replaced by random numbers, so that no zero-initialised leaf hides a mistake."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: rng.normal(size=np.shape(a)).astype(np.float32) * 0.3, params)


def _init(model, size, seed=0):
    """Random params of the model's shapes; ``eval_shape`` avoids compiling the init."""
    images = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["params"]
    return _random_like(shapes, seed)


def _build(pool_type, size=16, seed=0, **kw):
    model = bv.vit.create_model(5, pool_type=pool_type, **KW, **kw)
    return model, _init(model, size, seed)


_APPLY: dict[str, object] = {}  # one compiled apply per model configuration


def _logits(model, params, size=16):
    images = np.random.default_rng(1).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    apply = _APPLY.setdefault(repr(model), jax.jit(lambda p, x: model.apply({"params": p}, x)[0]))
    return np.asarray(apply(params, images))


@pytest.fixture(scope="module")
def models():
    return {pool: _build(pool, seed=i) for i, pool in enumerate(["gap", "tok", "map"])}


def _assert_same_tree(a, b):
    fa, fb = dict(flatten_with_names(a)), dict(flatten_with_names(b))
    assert sorted(fa) == sorted(fb)
    for name in fa:
        x, y = np.asarray(fa[name]), np.asarray(fb[name])
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), name


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("pool", ["gap", "tok", "map"])
def test_save_load_round_trip_is_bitwise_and_gives_equal_logits(models, pool, tmp_path):
    model, params = models[pool]
    path = str(tmp_path / "ckpt.npz")
    bvnpz.save_npz(path, params)

    flat = bvnpz.load_npz(path)
    assert "Transformer/encoderblock_1/MultiHeadDotProductAttention_0/query/kernel" in flat
    assert ("cls" in flat) == (pool == "tok") and ("MAPHead_0/probe" in flat) == (pool == "map")
    loaded = bvnpz.vit_params_from_big_vision(flat)
    _assert_same_tree(loaded, params)
    np.testing.assert_array_equal(_logits(model, loaded), _logits(model, params))


def test_to_big_vision_gives_flat_current_names_from_pyloop_and_scan(models):
    _, params = models["gap"]
    flat = bvnpz.vit_params_to_big_vision(params)
    assert all(isinstance(v, np.ndarray) for v in flat.values())
    assert set(flat) == {n for n, _ in flatten_with_names(params)}
    from_scan = bvnpz.vit_params_to_big_vision({"params": pyloop_to_scan(params)})
    assert set(from_scan) == set(flat)
    for name in flat:
        np.testing.assert_array_equal(from_scan[name], flat[name])


def test_scan_model_params_load_into_a_pyloop_model(tmp_path):
    scan_model, scan_params = _build("gap", scan=True, remat_policy="none")
    pyloop_model = bv.vit.create_model(5, pool_type="gap", **KW)
    bvnpz.save_npz(tmp_path / "s.npz", bvnpz.vit_params_to_big_vision(scan_params))
    loaded = bvnpz.vit_params_from_big_vision(bvnpz.load_npz(tmp_path / "s.npz"))
    np.testing.assert_allclose(_logits(pyloop_model, loaded), _logits(scan_model, scan_params), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- bfloat16


def test_bfloat16_is_stored_as_void_and_read_back_as_bfloat16(models, tmp_path):
    _, params = models["gap"]
    bf16 = jax.tree.map(lambda a: np.asarray(a).astype(BF16), params)
    path = tmp_path / "bf16.npz"
    bvnpz.save_npz(path, bf16)

    with np.load(path, allow_pickle=False) as raw:
        assert {raw[n].dtype for n in raw.files} == {np.dtype("V2")}
    flat = bvnpz.load_npz(path)
    assert {a.dtype for a in flat.values()} == {BF16}
    _assert_same_tree(bvnpz.vit_params_from_big_vision(flat), bf16)


def test_dtype_argument_casts_floats_to_bfloat16(models, tmp_path):
    _, params = models["gap"]
    bvnpz.save_npz(tmp_path / "c.npz", params, dtype="bfloat16")
    with np.load(tmp_path / "c.npz", allow_pickle=False) as raw:
        assert raw["embedding/kernel"].dtype == np.dtype("V2")
    flat = bvnpz.load_npz(tmp_path / "c.npz")
    expected = np.asarray(params["embedding"]["kernel"]).astype(BF16)
    assert flat["embedding/kernel"].dtype == BF16
    assert flat["embedding/kernel"].tobytes() == expected.tobytes()


def test_raw_void_arrays_given_directly_are_recovered(models):
    _, params = models["gap"]
    raw = {n: np.asarray(a).astype(BF16).view("V2") for n, a in bvnpz.vit_params_to_big_vision(params).items()}
    loaded = bvnpz.vit_params_from_big_vision(raw)
    assert loaded["head"]["kernel"].dtype == BF16


# ----------------------------------------------------------------------------- other layouts


def _old_vision_transformer_layout(params):
    """bv tok params renamed as the original ViT release names them, with a [cls] posemb entry."""
    rename = {
        "/MultiHeadDotProductAttention_0/": "/MultiHeadDotProductAttention_1/",
        "/LayerNorm_1/": "/LayerNorm_2/",
        "/MlpBlock_0/": "/MlpBlock_3/",
    }
    old, cls_pe = {}, None
    for name, leaf in bvnpz.vit_params_to_big_vision(params).items():
        if name.startswith("Transformer/encoderblock_"):
            for a, b in rename.items():
                name = name.replace(a, b)
        if name == "pos_embedding":
            cls_pe = np.random.default_rng(7).normal(size=(1, 1, leaf.shape[-1])).astype(np.float32)
            old["Transformer/posembed_input/pos_embedding"] = np.concatenate([cls_pe, leaf], axis=1)
        else:
            old[name] = leaf
    return old, cls_pe


def test_old_vision_transformer_layout_folds_the_cls_posemb_into_cls(models, tmp_path):
    model, params = models["tok"]
    old, cls_pe = _old_vision_transformer_layout(params)
    assert "Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel" in old
    bvnpz.save_npz(tmp_path / "old.npz", old)

    loaded = bvnpz.vit_params_from_big_vision(bvnpz.load_npz(tmp_path / "old.npz"))
    expected = {**params, "cls": np.asarray(params["cls"]) + cls_pe}
    _assert_same_tree(loaded, expected)
    np.testing.assert_array_equal(_logits(model, loaded), _logits(model, expected))


def test_pre_2022_posemb_under_transformer_is_moved_and_folded(models):
    _, params = models["tok"]
    flat = bvnpz.vit_params_to_big_vision(params)
    pe = flat.pop("pos_embedding")
    flat["Transformer/pos_embedding"] = np.concatenate([np.ones_like(pe[:, :1]), pe], axis=1)
    loaded = bvnpz.vit_params_from_big_vision(flat)
    np.testing.assert_array_equal(loaded["pos_embedding"], pe)
    np.testing.assert_array_equal(loaded["cls"], np.asarray(params["cls"]) + 1)


def test_scan_stacked_layout_loads_as_pyloop(models, tmp_path):
    model, params = models["map"]
    bvnpz.save_npz(tmp_path / "scan.npz", pyloop_to_scan(params))
    flat = bvnpz.load_npz(tmp_path / "scan.npz")
    assert flat["Transformer/encoderblock/LayerNorm_0/scale"].shape == (2, 32)
    loaded = bvnpz.vit_params_from_big_vision(flat)
    _assert_same_tree(loaded, params)
    np.testing.assert_array_equal(_logits(model, loaded), _logits(model, params))


def test_training_checkpoint_prefixes_are_stripped_and_optimizer_state_dropped(models, tmp_path):
    _, params = models["gap"]
    ckpt = {"params": params, "opt": {"mu": params, "count": np.int32(3)}}
    bvnpz.save_npz(tmp_path / "train.npz", ckpt)
    _assert_same_tree(bvnpz.vit_params_from_big_vision(bvnpz.load_npz(tmp_path / "train.npz")), params)
    flax_optim = {"opt": {"target": params, "state": {"step": np.int32(3)}}}
    flat_optim = {n: np.asarray(v) for n, v in flatten_with_names(flax_optim)}
    _assert_same_tree(bvnpz.vit_params_from_big_vision(flat_optim), params)


def test_two_tower_image_subtree_selection(models, tmp_path):
    model, params = models["map"]
    path = tmp_path / "siglip.npz"
    bvnpz.save_npz(path, {"params": {"img": params, "txt": {"Embed_0": {"embedding": np.ones((3, 4))}}, "t": 1.0}})

    for spec in [f"{path}:img", f"{path}:params/img"]:
        flat = bvnpz.load_npz(spec)
        assert not any(n.startswith(("img/", "txt/", "params/")) for n in flat)
        _assert_same_tree(bvnpz.vit_params_from_big_vision(flat), params)
    _assert_same_tree(bvnpz.vit_params_from_big_vision(bvnpz.load_npz(path, subtree="img")), params)
    txt = bvnpz.load_npz(path, subtree="txt")
    assert list(txt) == ["Embed_0/embedding"]

    with pytest.raises(ValueError, match="two-tower.*subtree='img'"):
        bvnpz.vit_params_from_big_vision(bvnpz.load_npz(path))
    with pytest.raises(ValueError, match="single array"):
        bvnpz.load_npz(path, subtree="t")


def test_split_npz_path():
    assert bvnpz.split_npz_path("a/b.npz") == ("a/b.npz", None)
    assert bvnpz.split_npz_path("a/b.npz:img") == ("a/b.npz", "img")
    assert bvnpz.split_npz_path("b.npz:params/img/") == ("b.npz", "params/img")
    assert bvnpz.split_npz_path("gs://bucket/x.npz") == ("gs://bucket/x.npz", None)
    assert bvnpz.split_npz_path("gs://bucket/x.npz:img") == ("gs://bucket/x.npz", "img")
    assert bvnpz.split_npz_path("C:\\ckpt\\x.npz") == ("C:\\ckpt\\x.npz", None)
    with pytest.raises(ValueError, match="Empty subtree"):
        bvnpz.split_npz_path("x.npz:")


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("pool", ["gap", "tok", "map"])
def test_infer_vit_kwargs_rebuilds_the_same_model(models, pool):
    model, params = models[pool]
    kw = bvnpz.infer_vit_kwargs(bvnpz.vit_params_to_big_vision(params))
    assert kw == {
        "width": 32,
        "depth": 2,
        "mlp_dim": 128,
        "num_heads": 2,
        "patch_size": (8, 8),
        "pool_type": pool,
        "num_classes": 5,
        "posemb": "learn",
        "rep_size": False,
    }
    rebuilt = bv.vit.create_model(**kw, head_zeroinit=False)
    np.testing.assert_array_equal(_logits(rebuilt, params), _logits(model, params))


def test_infer_vit_kwargs_without_head_with_pre_logits_and_sincos():
    model = bv.vit.create_model(None, variant="mu/4", num_heads=4, rep_size=16, posemb="sincos2d", pool_type="gap")
    params = _init(model, 8)
    kw = bvnpz.infer_vit_kwargs(bvnpz.vit_params_to_big_vision(params))
    assert kw["num_classes"] is None and kw["rep_size"] == 16 and kw["posemb"] == "sincos2d"
    assert kw["num_heads"] == 4 and kw["depth"] == 1 and kw["patch_size"] == (4, 4)


def test_resampled_posemb_loads_into_a_higher_resolution_model(tmp_path):
    _, params = _build("tok", size=32, seed=3)
    bvnpz.save_npz(tmp_path / "lo.npz", params)
    loaded = bvnpz.vit_params_from_big_vision(bvnpz.load_npz(tmp_path / "lo.npz"))
    old = loaded["pos_embedding"]
    loaded["pos_embedding"] = resample_posemb(old, 6, 6)

    hi_model = bv.vit.create_model(5, pool_type="tok", **KW)
    logits = _logits(hi_model, loaded, size=48)
    assert logits.shape == (2, 5) and np.isfinite(logits).all()
    old_grid, new_grid = old.reshape(4, 4, -1), loaded["pos_embedding"].reshape(6, 6, -1)
    for (i, j), (k, m) in zip([(0, 0), (0, 3), (3, 0), (3, 3)], [(0, 0), (0, 5), (5, 0), (5, 5)]):
        np.testing.assert_array_equal(new_grid[k, m], old_grid[i, j])


# ----------------------------------------------------------------------------- bad inputs


def test_pickle_file_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps({"embedding/kernel": np.zeros(3)}))
    with pytest.raises(ValueError, match="not a weights npz.*unpickle"):
        bvnpz.load_npz(path)


def test_object_array_is_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, good=np.zeros(2), bad=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a weights npz.*'bad' is an object"):
        bvnpz.load_npz(path)


def test_npy_file_is_refused(tmp_path):
    path = tmp_path / "single.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match="single ndarray"):
        bvnpz.load_npz(path)


@pytest.mark.parametrize("damage", ["cut half", "cut tail", "scramble data"])
def test_truncated_or_corrupt_npz_is_refused(models, tmp_path, damage):
    path = tmp_path / "bad.npz"
    bvnpz.save_npz(path, {"a": np.arange(4000, dtype=np.float32), "b": np.ones(3)})
    data = bytearray(path.read_bytes())
    if damage == "cut half":
        data = data[: len(data) // 2]
    elif damage == "cut tail":
        data = data[:-30]
    else:  # the zip directory survives but an array's bytes do not (caught by the CRC check)
        data[2000:2100] = bytes(100)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a weights npz.*(truncated or corrupt|cannot be read)"):
        bvnpz.load_npz(path)


def test_missing_file_and_missing_subtree(models, tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint file"):
        bvnpz.load_npz(tmp_path / "nope.npz")
    path = tmp_path / "p.npz"
    bvnpz.save_npz(path, {"params": {"img": {"a": np.zeros(2)}}, "opt": {"b": np.zeros(1)}})
    with pytest.raises(ValueError, match=r"no subtree 'txt'.*: opt, params, params/img\."):
        bvnpz.load_npz(f"{path}:txt")


def test_unknown_and_missing_names_are_listed(models):
    flat = bvnpz.vit_params_to_big_vision(models["gap"][1])
    flat["Transformer/encoderblock_0/Adapter_0/kernel"] = np.zeros(2)
    del flat["Transformer/encoder_norm/scale"]
    with pytest.raises(ValueError) as err:
        bvnpz.vit_params_from_big_vision(flat)
    message = str(err.value)
    assert "not part of a ViT: Transformer/encoderblock_0/Adapter_0/kernel" in message
    assert "missing: Transformer/encoder_norm/scale" in message
    with pytest.raises(ValueError, match="no encoder blocks"):
        bvnpz.vit_params_from_big_vision({"embedding/kernel": np.zeros(2)})


def test_failed_save_leaves_nothing_behind(models, tmp_path, monkeypatch):
    _, params = models["gap"]
    with pytest.raises(ValueError, match="Cannot store 'bad'"):
        bvnpz.save_npz(tmp_path / "a.npz", {"bad": np.array(["text"])})
    assert os.listdir(tmp_path) == []

    bvnpz.save_npz(tmp_path / "b.npz", params)
    before = (tmp_path / "b.npz").read_bytes()

    def fail_halfway(file, **arrays):
        with zipfile.ZipFile(file, "w") as z:
            z.writestr("embedding/kernel.npy", b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(bvnpz.np, "savez", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        bvnpz.save_npz(tmp_path / "b.npz", params)
    with pytest.raises(OSError, match="disk full"):
        bvnpz.save_npz(tmp_path / "c.npz", params)
    assert os.listdir(tmp_path) == ["b.npz"]
    assert (tmp_path / "b.npz").read_bytes() == before

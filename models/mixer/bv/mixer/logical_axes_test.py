"""Mixer's logical axis names: one per dimension of every param, in ViT's vocabulary, so that the trainer's
"logical" sharding strategy splits both MLPs of every block under ViT's Megatron rules.

Everything here is traced (``eval_shape``) against an abstract 4 x 2 mesh, so full-size models cost no
memory; ``tests/logical_sharding_test.py`` trains on 8 simulated devices with these layouts.
"""

from __future__ import annotations

import re
from typing import Any, cast

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import AbstractMesh, Mesh

from bv.core import sharding
from bv.core.tasks import get_task
from bv.core.tree import flatten_with_names
from bv.mixer import MlpMixer, create_model
from bv.mixer.configs import mnist
from bv.mixer.model import logical_axes

TINY: dict[str, Any] = {"patch_size": 8, "hidden_dim": 16, "num_blocks": 2, "tokens_mlp_dim": 8, "channels_mlp_dim": 32}
# The rules the ViT configs and docs/scaling.md use for Megatron-style model parallelism, unchanged.
MEGATRON = [("act_batch", "data"), ("mlp", "model"), ("heads", "model")]
MLP_KERNEL = r"MixerBlock_\d+/(token|channel)_mixing/Dense_[01]/kernel"


def _params(model: MlpMixer, res: int) -> Any:
    image = jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), image)["params"]


@pytest.mark.parametrize("kw, res", [(TINY, 32), ({"variant": "S/16"}, 224), ({"variant": "B/32"}, 224)])
def test_every_param_has_one_logical_name_per_dimension(kw: dict[str, Any], res: int) -> None:
    model = create_model(1000, **kw)
    params = _params(model, res)
    axes = model.logical_axes(params)
    leaves = flatten_with_names(params)
    assert set(axes) == {name for name, _ in leaves}  # nothing left unannotated, nothing extra
    for name, leaf in leaves:
        assert len(axes[name]) == leaf.ndim, (name, leaf.shape, axes[name])
        assert all(a is None or isinstance(a, str) for a in axes[name]), name
    block = "MixerBlock_1/"
    assert axes["stem/kernel"] == (None, None, None, "embed")  # as ViT's patch embedding
    assert axes[block + "token_mixing/Dense_0/kernel"] == ("tokens", "mlp")
    assert axes[block + "token_mixing/Dense_1/kernel"] == ("mlp", "tokens")
    assert axes[block + "token_mixing/Dense_1/bias"] == ("tokens",)
    assert axes[block + "channel_mixing/Dense_0/kernel"] == ("embed", "mlp")
    assert axes[block + "channel_mixing/Dense_0/bias"] == ("mlp",)
    assert axes[block + "channel_mixing/Dense_1/kernel"] == ("mlp", "embed")
    assert axes[block + "LayerNorm_0/scale"] == axes["pre_head_layer_norm/bias"] == ("embed",)
    assert axes["head/kernel"] == ("embed", "classes") and axes["head/bias"] == ("classes",)


def test_the_classification_task_gives_them_to_the_trainer() -> None:
    config = mnist.get_config("runlocal")  # model_name "mixer", through the registry
    task = get_task(config)
    params = jax.eval_shape(task.init, jax.random.key(0), {"image": jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)})
    got = task.logical_axes(params)
    assert got == logical_axes(params) and len(got) == len(flatten_with_names(params))


def test_vit_megatron_rules_split_every_mlp_of_mixer_s16_and_its_adam_state() -> None:
    model = create_model(1000, variant="S/16")
    params = _params(model, 224)
    opt = jax.eval_shape(optax.adam(1e-3).init, params)
    # Only the axis sizes matter for the layout, so an abstract mesh lays out a full-size model on one CPU.
    mesh = cast(Mesh, AbstractMesh((4, 2), ("data", "model")))
    shardings = sharding.param_shardings(
        {"params": params, "opt": opt},
        mesh,
        [(".*", "logical")],
        logical_axes=model.logical_axes(params),
        rules=MEGATRON,
    )
    specs = {name: tuple(s.spec) for name, s in flatten_with_names(shardings)}
    for prefix in ("params/", "opt/0/mu/", "opt/0/nu/"):
        for name, _ in flatten_with_names(params):
            spec = specs[prefix + name]
            if re.fullmatch(MLP_KERNEL, name):
                # Megatron: the first Dense splits its outputs (the hidden units), the second its inputs.
                assert spec == ((None, "model") if name.endswith("Dense_0/kernel") else ("model",)), (prefix, name)
            elif re.fullmatch(r".*_mixing/Dense_0/bias", name):
                assert spec == ("model",), name
            else:  # stem, norms, head, output biases: small, kept whole
                assert spec == (), (prefix, name, spec)
    split = [n for n, _ in flatten_with_names(params) if re.fullmatch(MLP_KERNEL, n)]
    assert len(split) == 4 * 8  # two MLPs of two Dense layers in each of the 8 blocks

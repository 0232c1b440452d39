"""BiT's logical axis names (v1 ``bit`` and v2 ``bit_paper``): one per dimension of every param, so that the
trainer's "logical" sharding strategy can split every convolution's filters over a ``model`` mesh axis.

Everything here is traced (``eval_shape``) against an abstract 4 x 2 mesh, so full-size models cost no
memory; ``tests/logical_sharding_test.py`` trains on 8 simulated devices with these layouts.
"""

from __future__ import annotations

from typing import Any, Callable, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import AbstractMesh, Mesh

from bv.core import sharding
from bv.core.tasks import get_task
from bv.core.tree import flatten_with_names
from bv.bit import block_sizes, create_model, create_paper_model
from bv.bit.configs import mnist
from bv.bit.model import logical_axes

FAMILIES: dict[str, Callable[..., nn.Module]] = {"bit": create_model, "bit_paper": create_paper_model}
# Output channels (and the GroupNorms that scale them) and the classes over the model axis.
RULES = [("act_batch", "data"), ("conv_out", "model"), ("classes", "model")]


def _params(model: nn.Module, res: int) -> Any:
    image = jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), image)["params"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kw, res", [({"depth": [1, 1], "width": 0.5}, 32), ({"depth": 50, "width": 1.0}, 224)])
def test_every_param_has_one_logical_name_per_dimension(family: str, kw: dict[str, Any], res: int) -> None:
    model = FAMILIES[family](1000, **kw)
    params = _params(model, res)
    axes = model.logical_axes(params)
    leaves = flatten_with_names(params)
    assert set(axes) == {name for name, _ in leaves}  # nothing left unannotated, nothing extra
    for name, leaf in leaves:
        assert len(axes[name]) == leaf.ndim, (name, leaf.shape, axes[name])
        if name.endswith("/kernel") and leaf.ndim == 4:
            assert axes[name] == (None, None, "conv_in", "conv_out"), name
        elif name.startswith("head/"):
            assert axes[name] == ("embed", "classes")[-leaf.ndim :], name
        else:  # GroupNorm: [C] in v1, [1, 1, 1, C] in v2
            assert axes[name] == (None,) * (leaf.ndim - 1) + ("conv_out",), name
    # Every conv was seen: the root, three per unit and one projection per stage.
    units = block_sizes(kw["depth"])
    convs = [n for n, leaf in leaves if leaf.ndim == 4 and n.endswith("/kernel")]
    assert len(convs) == 1 + 3 * sum(units) + len(units)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_classification_task_gives_them_to_the_trainer(family: str) -> None:
    config = mnist.get_config("runlocal")
    config.model_name = family  # through the registry, as a config names it
    task = get_task(config)
    params = jax.eval_shape(task.init, jax.random.key(0), {"image": jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)})
    got = task.logical_axes(params)
    assert got == logical_axes(params) and len(got) == len(flatten_with_names(params))


@pytest.mark.parametrize("family", FAMILIES)
def test_conv_out_rule_splits_every_filter_bank_of_r50x1_and_its_adam_state(family: str) -> None:
    module = FAMILIES[family](1000, depth=50, width=1.0)
    params = _params(module, 224)
    opt = jax.eval_shape(optax.adam(1e-3).init, params)
    # Only the axis sizes matter for the layout, so an abstract mesh lays out a full-size model on one CPU.
    mesh = cast(Mesh, AbstractMesh((4, 2), ("data", "model")))
    shardings = sharding.param_shardings(
        {"params": params, "opt": opt}, mesh, [(".*", "logical")], logical_axes=module.logical_axes(params), rules=RULES
    )
    specs = {name: tuple(s.spec) for name, s in flatten_with_names(shardings)}
    # Every leaf's last dimension is split: each conv's output channels, each GroupNorm's channels, the classes.
    for prefix in ("params/", "opt/0/mu/", "opt/0/nu/"):
        for name, leaf in flatten_with_names(params):
            assert specs[prefix + name] == (None,) * (leaf.ndim - 1) + ("model",), (prefix, name, specs[prefix + name])

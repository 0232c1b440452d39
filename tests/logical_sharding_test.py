"""Mixer and both BiT families train under the "logical" sharding strategy on a ("data", 4) x ("model", 2)
mesh of 8 simulated CPU devices: their big weights (and Adam state) are split over the model axis, and three
training steps give the losses of the replicated, data-parallel run (to 1e-5; the parameters are not
compared: Adam turns the rounding noise of near-zero gradients into differences of up to the learning rate).

The state and the step come from the trainer's own ``create_train_state`` and ``jit_train_step`` (the
path ``bv-train`` takes: ``Task.logical_axes`` finds the model's annotations), with fixed random batches
instead of the tf.data pipeline, so each run costs only its compilation.
"""

import os

# 8 simulated CPU devices, before jax starts its backend; optimization level 0 makes XLA compile ~3x faster here.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import re  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import bv.bit  # noqa: E402,F401  (registers "bit" and "bit_paper")
import bv.mixer  # noqa: E402,F401  (registers "mixer")
from bv.core import sharding  # noqa: E402
from bv.core.config import load_config  # noqa: E402
from bv.core.run_plan import plan_run  # noqa: E402
from bv.core.tasks import get_task  # noqa: E402
from bv.core.train_state import create_train_state, jit_train_step  # noqa: E402
from bv.core.tree import flatten_with_names  # noqa: E402

BATCH = 16
# The heads start at zero, so step 1 only trains the head, and step 3 is the first whose loss shows the body's
# sharded gradients and updates.
STEPS = 3
MODELS: dict[str, dict[str, Any]] = {
    # ViT's Megatron rules, unchanged: both MLPs of each block split their hidden units.
    "mixer": {
        "config": "bv.mixer.configs.mnist:runlocal",
        "model": dict(patch_size=(7, 7), hidden_dim=32, num_blocks=1, tokens_mlp_dim=16, channels_mlp_dim=64),
        "rules": [("act_batch", "data"), ("mlp", "model"), ("heads", "model")],
        "split": r"MixerBlock_\d+/(token|channel)_mixing/Dense_\d/kernel",
    },
    # Every conv's output channels (and the GroupNorms that scale them).
    "bit": {
        "config": "bv.bit.configs.mnist:runlocal",
        "model": dict(depth=[1], width=0.5),
        "rules": [("act_batch", "data"), ("conv_out", "model")],
        "split": r".*conv\w*/kernel",
    },
    "bit_paper": {
        "config": "bv.bit.configs.mnist:runlocal",
        "model": dict(depth=[1], width=0.5),
        "rules": [("act_batch", "data"), ("conv_out", "model")],
        "split": r".*conv\w*/kernel",
    },
}
REPLICATED = {
    "mesh": [("data", -1)],
    "sharding_strategy": [(".*", "replicate")],
    "sharding_rules": [("act_batch", "data")],
}


@pytest.fixture(autouse=True, scope="module")
def eight_devices() -> None:
    assert jax.device_count() == 8, "XLA_FLAGS must give 8 CPU devices before jax starts"


def _batches() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.uniform(-1, 1, (BATCH, 28, 28, 1)).astype(np.float32),
            "labels": np.eye(10, dtype=np.float32)[rng.integers(0, 10, BATCH)],
        }
        for _ in range(STEPS)
    ]


def _train(name: str, layout: dict[str, Any]) -> tuple[list[float], dict[str, Any], Any]:
    """Losses of ``STEPS`` steps, the state's shardings by name, and the params after the last step."""
    config = load_config(MODELS[name]["config"])
    config.model_name = name
    config.model = MODELS[name]["model"]
    config.input.batch_size = BATCH
    config.total_steps = STEPS
    config.schedule = dict(decay_type="constant")  # no warmup: step 1 updates the params
    for key, value in layout.items():
        config[key] = value
    mesh = sharding.make_mesh(config.mesh)
    plan = plan_run(config, train_size=BATCH * STEPS, mesh=mesh)
    task = get_task(config)
    batches = _batches()
    spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batches[0].items()}
    ts = create_train_state(config, task, plan, mesh, spec, workdir=None)
    step_fn = jit_train_step(config, task, ts, plan, mesh)
    losses = []
    with sharding.activation_rules(config.sharding_rules, mesh):
        state = ts.state
        for step, batch in enumerate(batches, start=1):
            state, metrics = step_fn(state, jax.device_put(batch, sharding.batch_sharding(mesh)), jnp.int32(step))
            losses.append(float(metrics["training_loss"]))
    return losses, dict(flatten_with_names(ts.shardings)), state["params"]


@pytest.mark.parametrize("name", MODELS)
def test_logical_layout_splits_the_big_weights_and_trains_as_replicated(name: str) -> None:
    logical = {
        "mesh": [("data", 4), ("model", 2)],
        "sharding_strategy": [(".*", "logical")],
        "sharding_rules": MODELS[name]["rules"],
    }
    want, _, _ = _train(name, REPLICATED)
    got, shardings, got_params = _train(name, logical)

    split = [n for n in shardings if re.fullmatch(r"(params|opt/.*/(mu|nu))/" + MODELS[name]["split"], n)]
    assert len(split) >= 3 * 4, split  # params and both Adam moments of at least four weights
    for leaf_name in split:
        assert "model" in tuple(shardings[leaf_name].spec), (leaf_name, shardings[leaf_name].spec)
    # The live arrays are laid out so: each device holds half of a split weight.
    for leaf_name, x in flatten_with_names(got_params):
        if re.fullmatch(MODELS[name]["split"], leaf_name):
            assert x.addressable_shards[0].data.size * 2 == x.size, leaf_name

    assert all(np.isfinite(want)) and len(set(want)) == STEPS  # every step saw the previous update
    np.testing.assert_allclose(got, want, rtol=1e-5)

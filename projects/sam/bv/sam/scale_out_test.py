"""SAM and GSAM on 8 simulated CPU devices with FSDP give the one-device run, step for step, to 1e-5.

The trainer's own state and step (``create_train_state``, ``jit_train_step``) are built for
a one-device mesh and for an 8-device mesh whose params are sharded by FSDP, and both take
the same 10 batches. With the global perturbation (the default) the perturbation comes
from the whole batch's gradient, computed on the sharded params, so the runs agree; with
``per_shard`` and a fixed ``shards`` the groups are the same on both meshes, so they agree
too. Gradient accumulation on the 8 devices changes nothing either.
"""

import os

# 8 simulated CPU devices, before jax starts its backend; optimisation level 0 makes XLA compile ~3x faster here.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bv.core import sharding  # noqa: E402
from bv.core.run_plan import plan_run  # noqa: E402
from bv.core.tasks import get_task  # noqa: E402
from bv.core.train_state import create_train_state, jit_train_step  # noqa: E402
from bv.core.tree import flatten_with_names  # noqa: E402

STEPS = 10
BATCH = 16
TOL = 1e-5
FSDP = [(".*", "fsdp(axis='data', min_size_mb=0)")]
GSAM = dict(rho_max=0.2, rho_min=0.05, alpha=0.5)


@pytest.fixture(autouse=True, scope="module")
def eight_devices() -> None:
    assert jax.device_count() == 8, "XLA_FLAGS must give 8 CPU devices before jax starts"


def _config(sam: dict[str, Any], **extra: Any) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            seed=0,
            task="sam",
            sam=sam,
            input=dict(batch_size=BATCH),
            total_steps=STEPS,
            model_name="vit",
            model=dict(patch_size=(4, 4), width=32, depth=1, num_heads=2, mlp_dim=64, pool_type="gap"),
            num_classes=8,
            # Momentum, not Adam: Adam makes the rounding noise of gradients that are zero in exact math
            # (the attention's key bias) into full-size updates, on any number of devices.
            optax_name="trace",
            optax=dict(decay=0.9),
            lr=0.1,
            wd=1e-3,
            grad_clip_norm=1.0,
            schedule=dict(decay_type="cosine", warmup_steps=2),
            **extra,
        )
    )


def _batches() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.uniform(-1, 1, (BATCH, 16, 16, 1)).astype(np.float32),
            "labels": np.eye(8, dtype=np.float32)[rng.integers(0, 8, BATCH)],
        }
        for _ in range(STEPS)
    ]


def _run(config: ml_collections.ConfigDict, devices: int) -> tuple[dict[str, np.ndarray], list[dict[str, float]], Any]:
    """STEPS steps of the trainer's step on the first ``devices`` devices; final params, logged metrics, shardings."""
    mesh = sharding.make_mesh([("data", devices)], jax.devices()[:devices])
    plan = plan_run(config, train_size=STEPS * BATCH, mesh=mesh)
    task = get_task(config)
    spec = {"image": jax.ShapeDtypeStruct((BATCH, 16, 16, 1), jnp.float32)}
    ts = create_train_state(config, task, plan, mesh, spec, workdir=None)
    step_fn = jit_train_step(config, task, ts, plan, mesh)
    logged = []
    state = ts.state
    for step, batch in enumerate(_batches(), start=1):
        state, metrics = step_fn(state, jax.device_put(batch, sharding.batch_sharding(mesh)), jnp.int32(step))
        logged.append({k: float(metrics[k]) for k in ("training_loss", "sam_rho", "sam_gap", "l2_grads")})
    params = {name: np.asarray(jax.device_get(x)) for name, x in flatten_with_names(state["params"])}
    return params, logged, state["params"]


def _assert_same_run(got: tuple, want: tuple) -> None:
    got_params, got_log, _ = got
    want_params, want_log, _ = want
    for step, (g, w) in enumerate(zip(got_log, want_log), start=1):
        for key in w:
            np.testing.assert_allclose(g[key], w[key], rtol=TOL, atol=1e-6, err_msg=f"{key} at step {step}")
    assert got_params.keys() == want_params.keys()
    for name in want_params:
        np.testing.assert_allclose(got_params[name], want_params[name], rtol=TOL, atol=TOL, err_msg=name)


def _sharded_names(params: Any) -> list[str]:
    return [name for name, x in flatten_with_names(params) if any(axis is not None for axis in x.sharding.spec)]


@pytest.mark.parametrize("sam", [dict(rho=0.1), GSAM, dict(GSAM, adaptive=True)], ids=["sam", "gsam", "adaptive_gsam"])
def test_global_perturbation_with_fsdp_on_8_devices_equals_one_device(sam: dict[str, Any]) -> None:
    one = _run(_config(sam), devices=1)
    eight = _run(_config(sam, sharding_strategy=FSDP), devices=8)
    assert "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" in _sharded_names(eight[2])  # FSDP did shard
    _assert_same_run(eight, one)
    if "rho_max" in sam:  # GSAM's rho followed the lr: up with the warmup, down with the decay
        rhos = [m["sam_rho"] for m in one[1]]
        assert rhos[0] == pytest.approx(0.05) and max(rhos) > rhos[-1] > rhos[0]
    if sam is GSAM:  # and with gradient accumulation on top
        _assert_same_run(_run(_config(sam, sharding_strategy=FSDP, grad_accum_steps=2), devices=8), one)


def test_per_shard_perturbation_with_fixed_shards_is_the_same_on_any_mesh() -> None:
    sam = dict(GSAM, perturbation="per_shard", shards=8)
    one = _run(_config(sam), devices=1)
    eight = _run(_config(sam, sharding_strategy=FSDP), devices=8)
    _assert_same_run(eight, one)
    # Eight groups of two examples are another algorithm than one perturbation for all sixteen.
    global_run = _run(_config(GSAM), devices=1)
    assert abs(global_run[1][-1]["training_loss"] - one[1][-1]["training_loss"]) > 1e-4

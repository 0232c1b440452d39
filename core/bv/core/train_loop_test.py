"""Tests for the advice bv-train gives after a non-finite loss (bv.core.train_loop.divergence_advice)."""

from __future__ import annotations

from bv.core.train_loop import divergence_advice

LOSSES = [(1, 2.3), (100, 0.9), (200, 0.4), (300, 0.35), (400, 3.1), (450, 41.0)]


def test_a_checkpoint_saved_after_the_loss_blew_up_is_not_offered_for_resuming():
    kept = [("W/checkpoints/ckpt-000000300", 300, 0.35), ("W/checkpoints/ckpt-000000400", 400, 3.1)]
    advice = divergence_advice(kept, LOSSES, "W")
    assert "latest checkpoint (step 400) was saved when the training loss was 3.1, against 0.35" in advice
    assert "resuming W would hit this again" in advice
    assert "--workdir NEW --config.resume=W/checkpoints/ckpt-000000300 and a lower config.lr" in advice


def test_a_healthy_latest_checkpoint_is_resumed_with_a_lower_lr():
    advice = divergence_advice([("W/checkpoints/ckpt-000000300", 300, 0.35)], LOSSES, "W")
    assert "(step 300, training loss 0.35) looks healthy: run again with a lower config.lr" in advice


def test_early_checkpoints_are_judged_against_the_losses_before_them():
    # 2.3 at step 1 is the lowest loss logged by then: healthy, though far above the later 0.35.
    kept = [("W/ckpt-1", 1, 2.3), ("W/ckpt-450", 450, 41.0)]
    assert "--config.resume=W/ckpt-1 " in divergence_advice(kept, LOSSES, "W")


def test_without_a_healthy_checkpoint_the_advice_is_a_new_workdir():
    advice = divergence_advice([("W/ckpt-450", 450, None)], LOSSES, "W")
    assert "saved when the training loss was unknown" in advice and "Start again in a new --workdir" in advice
    assert "No checkpoint was kept" in divergence_advice([], LOSSES, "W")


# ---------------------------------------------------------------------------------------- the loop itself


def _loop(total: int, step_fn, log_every: int = 3):
    import jax
    import numpy as np

    from bv.core import sharding
    from bv.core.metrics_log import MetricLog
    from bv.core.run_plan import RunPlan
    from bv.core.train_loop import TrainLoop
    from bv.core.train_state import TrainState

    mesh = sharding.make_mesh([("data", -1)])
    plan = RunPlan(
        train_size=64,
        batch_size=8,
        local_batch_size=8,
        grad_accum_steps=1,
        total_steps=total,
        schedule=None,
        log_every=log_every,
        ckpt_every=None,
        keep_every=None,
    )
    state = {"params": {"w": jax.numpy.zeros((4,))}}
    ts = TrainState(state, None, None, [], None, 0, {})  # type: ignore[arg-type]
    loop = TrainLoop(ts, step_fn, plan, mesh, [], MetricLog(None, quiet=True), None)
    batches = ({"image": np.full((8, 2), i, np.float32)} for i in range(1, 10**6))
    return loop, batches


def test_the_step_is_traced_once_and_sees_every_batch_in_order():
    import jax
    import jax.numpy as jnp

    from bv.core import sharding

    traces = []

    def step(state, batch, number):
        traces.append(1)  # runs only when jit traces
        w = state["params"]["w"] + batch["image"][0, 0]
        return {"params": {"w": w}}, {"training_loss": jnp.sum(w) * 0 + number.astype(jnp.float32)}

    # Laid out as the trainer's step is (bv.core.train_state.jit_train_step): explicit shardings, state donated.
    mesh = sharding.make_mesh([("data", -1)])
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    jitted = jax.jit(
        step,
        in_shardings=(replicated, sharding.batch_sharding(mesh), replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    loop, batches = _loop(7, jitted)
    loop.ts.state = jax.device_put(loop.ts.state, replicated)  # as create_train_state lays it out
    final = loop.run(batches)
    assert len(traces) == 1  # the step number and batches keep one signature: no retracing
    assert float(loop.ts.state["params"]["w"][0]) == sum(range(1, 8))  # batches 1..7, none skipped
    assert final["training_loss"] == 7.0  # logged at steps 3, 6 and at the last one
    assert loop.last_loss == 7.0 and not loop.pending  # every loss checked by the end


def test_a_nan_loss_stops_the_loop_within_the_steps_in_flight():
    import jax
    import jax.numpy as jnp
    import pytest

    from bv.core.train_loop import NonFiniteLossError, TrainLoop

    taken = []
    jitted = jax.jit(lambda state, batch, number: (state, {"training_loss": jnp.where(number >= 4, jnp.nan, 1.0)}))

    def step(state, batch, number):
        taken.append(int(number))
        return jitted(state, batch, number)

    loop, batches = _loop(50, step, log_every=25)
    with pytest.raises(NonFiniteLossError, match="The training loss is nan at step 4; stopping"):
        loop.run(batches)
    assert max(taken) <= 4 + TrainLoop.IN_FLIGHT  # the host never ran far past the bad step

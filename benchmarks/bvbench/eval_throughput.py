"""Eval throughput: the classification evaluator over MNIST-5k's test split against the bare forward pass.

The evaluator (``bv.evaluators.classification``) is built as the trainer builds it for
``bv.vit.configs.mnist``'s ``test`` eval (its pp, batch size and mesh) and run on freshly initialised
params, so the figure covers everything an evaluation does: tf.data decoding and preprocessing,
padding and masking, the host-to-device copies, the jitted eval step and the per-batch sums fetched
back. The bare figure is the same model's jitted forward pass on batches already on the device.
"""

from __future__ import annotations

from typing import Any

from bvbench.stats import Spread, alternate


def measure(rounds: int = 5) -> dict[str, Any]:
    import jax
    import numpy as np

    from bv.core import sharding
    from bv.core.config import load_config
    from bv.core.tasks import get_task
    from bv.evaluators import build_evaluators

    config = load_config("bv.vit.configs.mnist")
    mesh = sharding.make_mesh(config.get("mesh"))
    task = get_task(config)
    batch = int(config.input.batch_size)
    evals = {"test": config.evals.test}
    (entry,) = build_evaluators(evals, task.predict_fns(), mesh, batch_size=batch, data_dir=None, workdir=None)
    evaluator: Any = entry.evaluator  # the classification evaluator: its data is read here
    images = {"image": jax.ShapeDtypeStruct((batch, 28, 28, 1), np.float32)}
    params = jax.jit(task.init)(jax.random.PRNGKey(0), images)
    count = evaluator.data.num_examples
    device_batches = [b for b, _ in evaluator.data.batches()]
    predict = jax.jit(lambda p, x: task.predict_fns()["predict"](p, x)[0])

    def bare() -> None:
        jax.block_until_ready([predict(params, b["image"]) for b in device_batches])

    def full() -> None:
        evaluator.run(params)

    for fn in (bare, full):
        fn()  # compile and warm up
    times = alternate({"evaluator": full, "bare": bare}, rounds)
    return {
        "data": "mnist5k:test",
        "examples": count,
        "batch_size": batch,
        "pp": config.evals.test.pp_fn,
        "evaluator_img_s": Spread.of(times["evaluator"]).scaled(count).to_dict(),
        "bare_img_s": Spread.of(times["bare"]).scaled(count).to_dict(),
    }

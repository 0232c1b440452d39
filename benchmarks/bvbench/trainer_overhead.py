"""The trainer's step against the bare jitted step of the same model: what the loop costs per step.

    python -m bvbench.trainer_overhead [--config bv.vit.configs.mnist] [--steps 100 --rounds 5]

Both run the step the trainer compiles (``bv.core.train_state.jit_train_step``) for the config's
model, optimizer and batch, on real batches of the config's training data:

* bare: ``state, metrics = step(state, batch, i)`` in a Python loop over batches already on the
  device, and one ``block_until_ready`` at the end, the fastest way to call the step;
* trainer: ``bv.core.train_loop.TrainLoop.run`` over the same batches as numpy arrays (host
  batches, as the input pipeline yields them), with the config's logging cadence, the non-finite
  loss check and everything else the loop does between steps (no evaluators, no checkpoints).

The two alternate, ``--steps`` steps each, ``--rounds`` times, so a change of machine load hits
both alike; the gap is the median of the per-round ratios. The end-to-end rate with the config's
real input pipeline (``bv.core.train_data.TrainData``, tf.data preprocessing on the same CPU) is
measured after, for reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from typing import Any, Iterator

from bvbench.stats import Spread, alternate, ratios, seconds


def measure(
    config_name: str = "bv.vit.configs.mnist", steps: int = 100, rounds: int = 5, pipeline: bool = True
) -> dict[str, Any]:
    """Img/s of the bare step, of the trainer's loop and (``pipeline``) of the loop fed by the real input pipeline."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bv.core import sharding
    from bv.core.config import load_config
    from bv.core.data import input_pipeline
    from bv.core.metrics_log import MetricLog
    from bv.core.run_plan import plan_run
    from bv.core.tasks import get_task
    from bv.core.train_data import TrainData
    from bv.core.train_loop import TrainLoop
    from bv.core.train_state import create_train_state, jit_train_step

    config = load_config(config_name)
    mesh = sharding.make_mesh(config.get("mesh"))
    data = TrainData(config)
    plan = plan_run(config, data.size, mesh, jax.process_count())
    task = get_task(config)
    ts = create_train_state(config, task, plan, mesh, data.batch_spec(), None)
    step_fn = jit_train_step(config, task, ts, plan, mesh)
    plan = dataclasses.replace(plan, total_steps=steps)  # the loop's length; the step keeps the config's schedule
    batch_sharding = sharding.batch_sharding(mesh)

    stream = data.batches(0)
    host_batches = [next(stream) for _ in range(8)]
    device_batches = [input_pipeline.to_global_arrays(b, batch_sharding) for b in host_batches]

    def bare() -> None:
        metrics = None
        for i in range(steps):
            ts.state, metrics = step_fn(ts.state, device_batches[i % len(device_batches)], jnp.int32(i + 1))
        jax.block_until_ready((ts.state, metrics))

    def loop(batches: Iterator[Any]) -> None:
        ts.start_step = 0
        runner = TrainLoop(ts, step_fn, plan, mesh, [], MetricLog(None, quiet=True), None)
        with sharding.activation_rules(config.get("sharding_rules"), mesh):
            runner.run(batches)
        jax.block_until_ready(ts.state)

    def trainer() -> None:
        loop(itertools.cycle(host_batches))

    def first_step() -> None:  # compiles; the step donates the state, so keep the one it returns
        with sharding.activation_rules(config.get("sharding_rules"), mesh):
            ts.state = jax.block_until_ready(step_fn(ts.state, device_batches[0], jnp.int32(1)))[0]

    compile_s = seconds(first_step)
    fns = {"bare": bare, "trainer": trainer}
    if pipeline:
        # The whole input path: tf.data reads, decodes and augments on the same CPU cores.
        stream = data.batches(0)
        fns["pipeline"] = lambda: loop(stream)
    for fn in fns.values():
        fn()  # warm-up: the loop's first logging and copies, tf.data's buffers and caches
    times = alternate(fns, rounds)
    batch = plan.batch_size
    result: dict[str, Any] = {
        "config": config_name,
        "batch_size": batch,
        "steps_per_round": steps,
        "log_every": plan.log_every,
        "compile_s": compile_s,
        "image_shape": list(np.shape(host_batches[0]["image"])),
    }
    for name, values in times.items():
        result[f"{name}_img_s"] = Spread.of(values).scaled(batch * steps).to_dict()
        result[f"{name}_seconds"] = values  # each round's, in order: the ratios below pair them up
    # trainer time / bare time per round: 1.03 means the loop adds 3% to a step.
    result["trainer_over_bare"] = ratios(times["trainer"], times["bare"]).to_dict()
    if pipeline:
        result["pipeline_over_bare"] = ratios(times["pipeline"], times["bare"]).to_dict()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="bv.vit.configs.mnist")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-pipeline", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args()
    result = measure(args.config, args.steps, args.rounds, pipeline=not args.no_pipeline)
    if args.json:
        print(json.dumps(result))
        return
    bare, trainer = Spread(**result["bare_img_s"]), Spread(**result["trainer_img_s"])
    ratio = Spread(**result["trainer_over_bare"])
    print(f"{args.config}: batch {result['batch_size']}, {args.steps} steps x {args.rounds} rounds, alternated")
    if "pipeline_over_bare" in result:
        print(f"pipeline time / bare time: {Spread(**result['pipeline_over_bare']).format(3)}")
    print(f"bare jitted step: {bare.format(1, ' img/s')}")
    print(f"trainer step:     {trainer.format(1, ' img/s')}")
    print(f"trainer time / bare time: {ratio.format(3)}; gap {100 * (1 - 1 / ratio.median):.1f}% of throughput")
    if "pipeline_img_s" in result:
        print(f"trainer + input pipeline: {Spread(**result['pipeline_img_s']).format(1, ' img/s')}")


if __name__ == "__main__":
    main()

"""What a distillation teacher costs per training step: the same student trained on labels vs distilled.

    ./pants run benchmarks:distill_overhead -- [--steps 20] [--batch 128] [--teacher-width 96 --teacher-depth 4]
    python benchmarks/distill_overhead.py --teacher-width 384 --teacher-depth 12 --batch 256

Both steps are the trainer's own: the config is ``bv.distill.configs.distill_mnist``
(student ``distill_mnist.STUDENT``, its optimizer and ``config.mixup``), the task comes
from ``bv.core.tasks.get_task`` (``classification`` for the labels, ``distill`` for the
teacher), and the state and the compiled step from ``bv.core.train_state``
(``create_train_state``, ``jit_train_step``) on the trainer's mesh. Only ``config.task``
differs, so the difference is the teacher's forward pass and the KL against it. The teacher
is a freshly initialised bv ViT (``bv.vit.configs.mnist``'s model unless ``--teacher-*``
say otherwise) saved to a temporary folder and loaded as the trainer loads one, so no
trained workdir is needed; its weights do not change its cost. The batch is random data
already on the devices (no input pipeline). The two steps are timed in alternation, one
step each in turn, so that a change in machine load hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bv.core import sharding
from bv.core.run_plan import plan_run
from bv.core.tasks import Task, get_task
from bv.core.train_state import TrainState, create_train_state, jit_train_step
from bv.distill.configs import distill_mnist
from bv.vit import ViT
from bv.vit.configs import mnist

RESOLUTION, CHANNELS, CLASSES = 28, 1, 10
TRAIN_SIZE = 4_000  # MNIST-5k's train split: only the schedule's warm-up (in epochs) reads it


def parse_args() -> argparse.Namespace:
    teacher = mnist.get_config().model
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher-width", type=int, default=teacher.width, help="teacher ViT width")
    parser.add_argument("--teacher-depth", type=int, default=teacher.depth, help="teacher ViT depth (blocks)")
    parser.add_argument(
        "--teacher-heads", type=int, default=None, help="teacher attention heads (default: width / 32, mnist's)"
    )
    parser.add_argument("--batch", type=int, default=128, help="global batch size")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each (after two warm-up steps)")
    args = parser.parse_args()
    if args.teacher_heads is None:
        args.teacher_heads = max(1, args.teacher_width // (teacher.width // teacher.num_heads))
    if args.teacher_width % args.teacher_heads:
        parser.error(f"--teacher-width {args.teacher_width} is not divisible by {args.teacher_heads} heads.")
    return args


def make_teacher(folder: str, width: int, depth: int, heads: int) -> dict[str, Any]:
    """Saves a fresh bv ViT of ``bv.vit.configs.mnist``'s shape (width, depth, heads as given) to ``folder``."""
    model = dict(mnist.get_config().model)
    model.update(width=width, depth=depth, num_heads=heads, mlp_dim=4 * width)
    pp = "decode(channels=1)|value_range(-1, 1)"
    ViT.create(num_classes=CLASSES, resolution=RESOLUTION, channels=CHANNELS, pp=pp, **model).save_pretrained(folder)
    return model


def make_config(teacher: str, task: str, batch: int, total_steps: int) -> ml_collections.ConfigDict:
    """``distill_mnist`` (distilled), with ``config.task`` switched for the label-trained twin."""
    config = distill_mnist.get_config(f"teacher={teacher}")
    config.input.batch_size = batch
    del config.total_epochs
    config.total_steps = total_steps
    if task == "classification":  # the same student, optimizer and mixup; labels instead of the teacher
        config.task = "classification"
        del config.teachers
    return config


def build(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, batch_spec: dict[str, jax.ShapeDtypeStruct]
) -> tuple[Task, TrainState, Any]:
    """The task, a fresh training state and the jitted step (to ``.lower``), as ``bv.core.train.train`` makes them."""
    plan = plan_run(config, TRAIN_SIZE, mesh, jax.process_count())
    task = get_task(config)
    ts = create_train_state(config, task, plan, mesh, batch_spec, workdir=None)
    return task, ts, jit_train_step(config, task, ts, plan, mesh)


def main() -> None:
    args = parse_args()
    mesh = sharding.make_mesh(distill_mnist.get_config().get("mesh"))
    rng = np.random.default_rng(0)
    host_batch = {
        "image": rng.uniform(-1, 1, (args.batch, RESOLUTION, RESOLUTION, CHANNELS)).astype(np.float32),
        "labels": np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, args.batch)],
    }
    batch = jax.device_put(host_batch, sharding.batch_sharding(mesh))
    batch_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in host_batch.items()}
    total_steps = args.steps + 100  # the schedule's length: the lr never reaches zero while timed

    with tempfile.TemporaryDirectory() as folder:
        teacher_model = make_teacher(folder, args.teacher_width, args.teacher_depth, args.teacher_heads)
        runs: dict[str, dict[str, Any]] = {}
        for name in ("classification", "distill"):
            config = make_config(folder, name, args.batch, total_steps)
            with sharding.activation_rules(config.get("sharding_rules"), mesh):
                task, ts, step_fn = build(config, mesh, batch_spec)
                t0 = time.perf_counter()
                compiled = step_fn.lower(ts.state, batch, jnp.int32(1)).compile()
                compile_s = time.perf_counter() - t0
            runs[name] = dict(task=task, ts=ts, step=compiled, compile_s=compile_s, times=[])

        def one_step(run: dict[str, Any], step: int) -> float:
            t0 = time.perf_counter()
            run["ts"].state, metrics = run["step"](run["ts"].state, batch, jnp.int32(step))
            jax.block_until_ready((run["ts"].state, metrics))
            return time.perf_counter() - t0

        for step in (1, 2):  # warm-up
            for run in runs.values():
                one_step(run, step)
        for step in range(3, args.steps + 3):
            for run in runs.values():
                run["times"].append(one_step(run, step))

        # The teacher's forward pass alone, on the same batch (the distill task's own function, jitted).
        distill_task = runs["distill"]["task"]
        teacher_probs = distill_task.frozen().jit(distill_task.teacher_probs)
        jax.block_until_ready(teacher_probs(batch["image"]))
        forward = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            jax.block_until_ready(teacher_probs(batch["image"]))
            forward.append(time.perf_counter() - t0)

    student_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(runs["classification"]["ts"].state["params"]))
    teacher_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(runs["distill"]["task"].teachers[0].params))
    labels_s = statistics.median(runs["classification"]["times"])
    distill_s = statistics.median(runs["distill"]["times"])
    forward_s = statistics.median(forward)

    def describe(model: dict[str, Any]) -> str:
        return (
            f"width {model['width']}, depth {model['depth']}, {model['num_heads']} heads, patch {model['patch_size']}"
        )

    device = jax.devices()[0]
    print(f"device: {device.device_kind} x{jax.device_count()} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"student: ViT {describe(distill_mnist.STUDENT)}: {student_params / 1e6:.3f} M params")
    print(f"teacher: ViT {describe(teacher_model)}: {teacher_params / 1e6:.3f} M params")
    print(f"batch {args.batch} x {RESOLUTION}x{RESOLUTION}x{CHANNELS}; median of {args.steps} steps each, alternated")
    for label, name, step_s in (("labels ", "classification", labels_s), ("distill", "distill", distill_s)):
        times = runs[name]["times"]
        print(
            f"{label} (task={name}): {step_s * 1e3:.1f} ms/step (min {min(times) * 1e3:.1f}, max "
            f"{max(times) * 1e3:.1f}), {args.batch / step_s:.0f} img/s; compile {runs[name]['compile_s']:.1f} s"
        )
    print(f"ratio distill / labels: {distill_s / labels_s:.2f}x")
    print(f"teacher's share of the distill step: {100 * (distill_s - labels_s) / distill_s:.0f}% (step difference)")
    print(f"teacher forward alone: {forward_s * 1e3:.1f} ms ({100 * forward_s / distill_s:.0f}% of the distill step)")


if __name__ == "__main__":
    main()

"""What the suite runs: the sections and their sizes, for a full run, a ``--quick`` one, and on a GPU."""

from __future__ import annotations

import dataclasses
from typing import Any

# The 224 px models of the bv-vs-timm tables, in order.
MODELS_224 = ("vit_ti16", "vit_s16", "vit_b16", "mixer_b16", "bit_r50x1")
VITS = ("vit_ti16", "vit_s16", "vit_b16")
DEVICES_XLA_FLAG = "--xla_force_host_platform_device_count"


@dataclasses.dataclass(frozen=True)
class Job:
    """One section run in its own process."""

    name: str
    section: str
    kwargs: dict[str, Any]
    title: str
    simulated_devices: int | None = None  # CPU devices XLA should simulate (FSDP, checkpoints)
    timeout_s: int = 1800


def jobs(quick: bool, gpu: bool) -> list[Job]:
    """The suite's jobs. ``quick`` keeps a 2-core CPU run to about a quarter of an hour; ``gpu`` adds the GPU section
    and sizes the batches for a GPU."""
    rounds = 3 if quick else 5
    out = [
        Job(
            "trainer_overhead",
            "trainer_overhead",
            dict(steps=5 if quick else 20, rounds=10 if quick else 15, pipeline=True),
            "trainer step vs bare jitted step",
        )
    ]
    # Training and inference, bv against timm, same architecture and batch, alternated in one process per model.
    if gpu:
        train_batch, infer_batch, steps = 128, 256, 5
    else:
        train_batch, infer_batch, steps = (4, 8, 1) if quick else (16, 32, 2)
    for key in MODELS_224:
        runs: list[dict[str, Any]] = [
            dict(mode="train", dtype="float32", batch=train_batch, rounds=rounds, steps=steps),
            dict(mode="infer", dtype="float32", batch=infer_batch, rounds=rounds, steps=steps),
        ]
        if key in VITS and (not quick or key == "vit_ti16"):
            runs.append(dict(mode="train", dtype="bfloat16", batch=train_batch, rounds=rounds, steps=steps))
            runs.append(dict(mode="infer", dtype="bfloat16", batch=infer_batch, rounds=rounds, steps=steps))
        out.append(Job(f"model_{key}", "model", dict(key=key, runs=runs), f"bv vs timm: {key}"))
    mnist_runs = [
        dict(mode=mode, dtype=dtype, batch=128, rounds=rounds, steps=3 if quick else 10)
        for mode in ("train", "infer")
        for dtype in ("float32", "bfloat16")
    ]
    out.append(Job("model_vit_mnist", "model", dict(key="vit_mnist", runs=mnist_runs), "bv vs timm: MNIST ViT"))
    # How cost grows with the batch (model size: the training table's ViT-Ti/S/B rows).
    batches = [8, 16, 32, 64, 128] if gpu else ([2, 4, 8] if quick else [2, 4, 8, 16, 32])
    out.append(Job("scaling_batch", "scaling", dict(key="vit_ti16", batches=batches, rounds=rounds), "batch scaling"))
    # Computed from shapes (nothing allocated): cheap, the same in both sizes.
    fsdp_runs = [
        dict(variant="B/16", device_counts=[1, 2, 4, 8]),
        dict(variant="B/16", device_counts=[1, 2, 4, 8], scan=True),
        dict(variant="L/16", device_counts=[1, 2, 4, 8]),
    ]
    out.append(Job("fsdp", "fsdp", dict(runs=fsdp_runs), "FSDP memory", simulated_devices=8, timeout_s=900))
    out.append(
        Job(
            "checkpoint",
            "checkpoint",
            dict(variant="S/16" if quick else "B/16", repeats=rounds),
            "checkpoint save/restore",
            simulated_devices=8,
        )
    )
    out.append(
        Job("load_pretrained", "load_pretrained", dict(variant="B/16", repeats=rounds), "from_pretrained vs timm")
    )
    out.append(
        Job(
            "pp",
            "pp",
            dict(images=600 if quick else 2000, rounds=rounds, examples=128 if quick else 256),
            "input pipeline",
        )
    )
    out.append(Job("evaluation", "evaluation", dict(rounds=rounds), "eval throughput"))
    if gpu:
        out.append(Job("gpu", "gpu", dict(rounds=rounds), "GPU: ViT-B/16 bf16 and MFU"))
    return out

"""Training and inference throughput of bv models, and of timm's same architecture in the same process.

A training step is the trainer's own (``bv.core.train_state.make_train_step``: forward, backward,
gradient clipping, Adam, weight decay, on a batch already on the device); timm's is the usual
PyTorch step for the same model (``zero_grad``, forward, cross-entropy, backward, gradient
clipping, AdamW). Inference is the jitted ``apply(train=False)`` against timm's model in
``eval()`` under ``torch.inference_mode()``. bf16 means bf16 matmuls: ``dtype_mm="bfloat16"``
(ViT) in bv, ``torch.autocast(dtype=torch.bfloat16)`` in timm.

The two frameworks alternate, one run each in turn, so a change of machine load hits both
alike; the bv/timm ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from bvbench.stats import Spread, alternate, ratios, seconds

# Peak dense FLOP/s per device, (bf16, fp32 as XLA runs fp32 matmuls: TF32 on NVIDIA), for the MFU.
PEAK_FLOPS = {
    "H200": (989e12, 494e12),
    "H100": (989e12, 494e12),
    "A100": (312e12, 156e12),
    "L40S": (362e12, 183e12),
    "L4": (121e12, 60e12),
    "RTX 4090": (165e12, 82.6e12),
    "TPU v4": (275e12, 275e12),
    "TPU v5 lite": (197e12, 197e12),
    "TPU v5p": (459e12, 459e12),
}


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """The device's peak dense FLOP/s for ``dtype`` matmuls, None where unknown (CPUs)."""
    for name, (bf16, fp32) in PEAK_FLOPS.items():
        if name.lower() in device_kind.lower():
            return bf16 if dtype == "bfloat16" else fp32
    return None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One architecture in bv (registry name and kwargs) and in timm (model name or constructor kwargs)."""

    label: str
    model_name: str
    model: dict[str, Any]
    timm: str | None
    res: int = 224
    channels: int = 3
    classes: int = 1000
    timm_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    bf16: bool = False  # bv's model has dtype_mm

    def bv_model(self, dtype: str) -> dict[str, Any]:
        return {**self.model, **({"dtype_mm": dtype} if self.bf16 else {})}


def _mnist_spec() -> ModelSpec:
    from bv.vit.configs import mnist

    model = dict(mnist.get_config().model)
    patch = tuple(model["patch_size"])
    return ModelSpec(
        "ViT MNIST-5k (configs/mnist.py)",
        "vit",
        model,
        "vit",  # timm's VisionTransformer with the same sizes; its posemb is learned, bv's sincos2d (same cost)
        res=28,
        channels=1,
        classes=10,
        timm_kwargs=dict(
            img_size=28,
            patch_size=patch[0],
            embed_dim=model["width"],
            depth=model["depth"],
            num_heads=model["num_heads"],
            mlp_ratio=model["mlp_dim"] / model["width"],
            global_pool="avg",
            class_token=False,
            in_chans=1,
            num_classes=10,
        ),
        bf16=True,
    )


def _vit(label: str, variant: str, timm: str) -> ModelSpec:
    # timm's vit_*_patch16_224: a [cls] token, a learned posemb and the exact GELU.
    model = dict(variant=variant, pool_type="tok", posemb="learn", approximate_gelu=False)
    return ModelSpec(label, "vit", model, timm, bf16=True)


SPECS: dict[str, Callable[[], ModelSpec]] = {
    "vit_ti16": lambda: _vit("ViT-Ti/16", "Ti/16", "vit_tiny_patch16_224"),
    "vit_s16": lambda: _vit("ViT-S/16", "S/16", "vit_small_patch16_224"),
    "vit_b16": lambda: _vit("ViT-B/16", "B/16", "vit_base_patch16_224"),
    "mixer_b16": lambda: ModelSpec(
        "Mixer-B/16", "mixer", dict(variant="B/16", approximate_gelu=False), "mixer_b16_224"
    ),
    "bit_r50x1": lambda: ModelSpec("BiT-R50x1", "bit_paper", dict(depth=50, width=1), "resnetv2_50x1_bit"),
    "vit_mnist": _mnist_spec,
}


# ------------------------------------------------------------------------------------------------ bv


@dataclasses.dataclass
class Compiled:
    """A benchmark callable (runs ``steps`` steps and blocks), and what XLA says about one step."""

    run: Callable[[], None]
    compile_s: float
    flops: float  # per step (XLA cost analysis), 0 where unknown
    peak_bytes: int  # XLA memory analysis of one step: arguments + outputs + temporaries - aliased
    params: int


def _memory(compiled: Any) -> int:
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001  (not every backend reports it)
        return 0


def _flops(compiled: Any) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def bv_step(spec: ModelSpec, mode: str, dtype: str, batch: int, steps: int) -> Compiled:
    """bv's jitted training step (``mode="train"``) or forward pass (``"infer"``), ready to time."""
    import time

    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    from bv.core.optimizers import make_optimizer
    from bv.core.tasks import ClassificationTask
    from bv.core.train_state import make_train_step

    config = ml_collections.ConfigDict(
        dict(
            model_name=spec.model_name,
            num_classes=spec.classes,
            model=spec.bv_model(dtype),
            optax_name="scale_by_adam",
            lr=1e-3,
            wd=1e-4,
            schedule=dict(decay_type="cosine", warmup_steps=10),
            grad_clip_norm=1.0,
        )
    )
    task = ClassificationTask(config)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, (batch, spec.res, spec.res, spec.channels)), jnp.float32)
    labels = jax.nn.one_hot(rng.integers(0, spec.classes, batch), spec.classes)
    data = {"image": images, "labels": labels}
    params = jax.jit(task.init)(jax.random.PRNGKey(0), data)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    if mode == "train":
        tx, schedules = make_optimizer(config, params, total_steps=1000)
        state = {"params": params, "opt": jax.jit(tx.init)(params), "rng": jax.random.PRNGKey(1)}
        fn = jax.jit(make_train_step(task, tx, schedules), donate_argnums=(0,))
        start = time.perf_counter()
        compiled = fn.lower(state, data, np.int32(1)).compile()
        compile_s = time.perf_counter() - start
        box = {"state": state}

        def run() -> None:
            out = None
            for i in range(steps):
                box["state"], out = compiled(box["state"], data, np.int32(i + 1))
            jax.block_until_ready((box["state"], out))

    else:
        predict = task.predict_fns()["predict"]
        fn = jax.jit(lambda p, x: predict(p, x)[0])
        start = time.perf_counter()
        compiled = fn.lower(params, images).compile()
        compile_s = time.perf_counter() - start

        def run() -> None:
            out = None
            for _ in range(steps):
                out = compiled(params, images)
            jax.block_until_ready(out)

    return Compiled(run, compile_s, _flops(compiled), _memory(compiled), num_params)


# ---------------------------------------------------------------------------------------------- timm


def timm_step(
    spec: ModelSpec, mode: str, dtype: str, batch: int, steps: int, device: str = "cpu"
) -> Callable[[], None]:
    """timm's training step or forward pass of the same architecture, ready to time."""
    import contextlib

    import timm
    import torch

    if spec.timm is None:
        raise ValueError(f"{spec.label} has no timm counterpart.")
    if spec.timm_kwargs:
        from timm.models.vision_transformer import VisionTransformer

        model = VisionTransformer(**spec.timm_kwargs)
    else:
        model = timm.create_model(spec.timm, pretrained=False, num_classes=spec.classes)
    model = model.to(device)
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(batch, spec.channels, spec.res, spec.res, generator=gen) * 2 - 1).to(device)
    labels = torch.randint(0, spec.classes, (batch,), generator=gen).to(device)
    autocast = (
        torch.autocast(device_type=device, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    )

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    if mode == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)

        def run() -> None:
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                with autocast:
                    loss = torch.nn.functional.cross_entropy(model(images), labels)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            sync()

    else:
        model.eval()

        def run() -> None:
            with torch.inference_mode(), autocast:
                for _ in range(steps):
                    model(images)
            sync()

    return run


# -------------------------------------------------------------------------------------------- compare


def compare(
    key: str,
    mode: str,
    dtype: str = "float32",
    batch: int = 8,
    rounds: int = 3,
    steps: int = 1,
    with_timm: bool = True,
) -> dict[str, Any]:
    """bv (and timm) img/s for model ``key`` of :data:`SPECS`: median, min, max over ``rounds`` runs of ``steps`` steps."""
    import jax

    spec = SPECS[key]()
    if dtype == "bfloat16" and not spec.bf16:
        raise ValueError(f"{spec.label}: bv's model has no bf16 matmul option.")
    bv = bv_step(spec, mode, dtype, batch, steps)
    fns: dict[str, Callable[[], None]] = {"bv": bv.run}
    torch_threads = None
    if with_timm and spec.timm:
        import torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))
        torch_threads = torch.get_num_threads()
        device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
        fns["timm"] = timm_step(spec, mode, dtype, batch, steps, device)
    for fn in fns.values():
        fn()  # warm-up: first-call allocations, oneDNN/cuDNN plans
    times = alternate(fns, rounds)
    device = jax.devices()[0]
    step_s = Spread.of(times["bv"]).median / steps
    peak = peak_flops(device.device_kind, dtype)
    out: dict[str, Any] = {
        "key": key,
        "model": spec.label,
        "timm_model": spec.timm,
        "mode": mode,
        "dtype": dtype,
        "img_size": spec.res,
        "batch_size": batch,
        "steps_per_run": steps,
        "param_count": bv.params,
        "compile_s": bv.compile_s,
        "flops_per_step": bv.flops,
        "xla_peak_bytes": bv.peak_bytes,
        "mfu": bv.flops / step_s / peak if peak and bv.flops else None,
        "device": f"{device.device_kind} ({jax.default_backend()})",
        "torch_threads": torch_threads,
    }
    for name, values in times.items():
        out[f"{name}_img_s"] = Spread.of(values).scaled(batch * steps).to_dict()
        out[f"{name}_step_ms"] = Spread.of([1e3 * v / steps for v in values]).to_dict()
    if "timm" in times:
        # bv throughput / timm throughput per round: above 1, bv is faster.
        out["bv_over_timm"] = ratios(times["timm"], times["bv"]).to_dict()
    return out


def gmacs(key: str) -> float:
    """Forward multiply-accumulates of one image, in billions (XLA's FLOP count / 2 at batch 1)."""
    spec = SPECS[key]()
    compiled = bv_step(spec, "infer", "float32", 1, 1)
    return compiled.flops / 2 / 1e9


def scaling(key: str, batches: list[int], rounds: int = 3, steps: int = 1) -> list[dict[str, Any]]:
    """bv training step time, img/s and XLA's peak memory of one step at each batch size."""
    out = []
    for batch in batches:
        bv = bv_step(SPECS[key](), "train", "float32", batch, steps)
        bv.run()
        times = [seconds(bv.run) for _ in range(rounds)]
        out.append(
            {
                "key": key,
                "batch_size": batch,
                "step_ms": Spread.of([1e3 * t / steps for t in times]).to_dict(),
                "img_s": Spread.of(times).scaled(batch * steps).to_dict(),
                "xla_peak_bytes": bv.peak_bytes,
                "param_count": bv.params,
            }
        )
    return out

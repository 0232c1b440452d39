"""Input-pipeline throughput of the ImageNet pp (training, with and without RandAugment; eval), per CPU core.

    python benchmarks/pp_throughput.py [--workers 2] [--images 1000] [--rounds 5] [--examples 256]
    (from the repo root with PYTHONPATH=core:preprocessing)

Pipelines, on real photos (scikit-learn's two sample JPEGs, cut into ``--examples`` crops of
ImageNet-like size, 300..427 x 330..640, re-encoded with ``tf.io.encode_jpeg`` at quality 90):

    base:    decode_jpeg_and_inception_crop(224)|flip_lr|value_range(-1,1)
    randaug: decode_jpeg_and_inception_crop(224)|flip_lr|randaug(2,10)|value_range(-1,1)
    eval:    decode|resize_small(256)|central_crop(224)|value_range(-1,1)

Each runs as a parallel ``tf.data`` map with ``--workers`` threads (private thread pool, one
intra-op thread); the two pipelines alternate in ``--rounds`` rounds after an untimed warm-up.
The headline figure is images per CPU-second of the process, i.e. per fully available core,
which stays meaningful on a shared machine; the wall-clock rate is printed too.

Measured on a shared 2-core AMD EPYC VM (tensorflow-cpu 2.21) that was busy with other jobs (load average
9-11 during the runs, so wall-clock rates were 40-60% of the CPU-time rates):

    --workers 1 --images 1000:  base 511, randaug 184 img per CPU-second  (ratio 0.36)
    --workers 2 --images 1000:  base 496, randaug 210 img per CPU-second  (ratio 0.42)

So RandAugment(2, 10) costs about 3 ms of CPU per 224px image (about 1.5 ms per layer), 2.4-2.8x
the cost of decode + inception crop + flip + value_range: ~200 img/s per core with it, ~500 without.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Iterator

import numpy as np
import tensorflow as tf

import bv.pp  # noqa: F401  (registers the ops)
from bv.pp.builder import get_preprocess_fn

PIPELINES = {
    "base": "decode_jpeg_and_inception_crop(224)|flip_lr|value_range(-1, 1)",
    "randaug": "decode_jpeg_and_inception_crop(224)|flip_lr|randaug(2, 10)|value_range(-1, 1)",
    "eval": "decode|resize_small(256)|central_crop(224)|value_range(-1, 1)",
}


def make_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """``count`` JPEGs cut from scikit-learn's two sample photos (427 x 640), with varied sizes and crops."""
    from sklearn.datasets import load_sample_images  # imported here: only the benchmark needs sklearn

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    jpegs = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h = int(rng.integers(300, photo.shape[0] + 1))
        w = int(rng.integers(330, photo.shape[1] + 1))
        y = int(rng.integers(0, photo.shape[0] - h + 1))
        x = int(rng.integers(0, photo.shape[1] - w + 1))
        crop = photo[y : y + h, x : x + w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        jpegs.append(tf.io.encode_jpeg(np.ascontiguousarray(crop), quality=90).numpy())
    return jpegs


def make_iterator(pp: str, jpegs: list[bytes], workers: int) -> Iterator[Any]:
    """An endless iterator over ``pp`` applied to the JPEGs, mapped by ``workers`` threads."""
    seeds = np.stack([np.arange(len(jpegs)), np.full(len(jpegs), 17)], axis=1).astype(np.int64)
    ds = tf.data.Dataset.from_tensor_slices({"image": jpegs, "_rng": seeds}).repeat()
    ds = ds.map(get_preprocess_fn(pp), num_parallel_calls=workers, deterministic=False)
    options = tf.data.Options()
    options.threading.private_threadpool_size = workers
    options.threading.max_intra_op_parallelism = 1
    return iter(ds.with_options(options).prefetch(2 * workers))


def throughput(it: Iterator[Any], images: int) -> tuple[float, float]:
    """Images per wall-clock second and per CPU-second of this process (all its threads).

    On a machine shared with other jobs the wall-clock rate depends on their load; the CPU-time
    rate is what the work itself costs, i.e. the rate per fully available core.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(images):
        next(it)
    return images / (time.perf_counter() - wall), images / (time.process_time() - cpu)


def measure(
    workers: int | None = None,
    images: int = 2000,
    examples: int = 256,
    rounds: int = 5,
    warmup: int = 50,
    pipelines: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Images per CPU-second and per wall-clock second of each pipeline, alternated in ``rounds`` rounds."""
    workers = workers or len(os.sched_getaffinity(0))
    pipelines = pipelines or PIPELINES
    jpegs = make_jpegs(examples)
    iterators = {name: make_iterator(pp, jpegs, workers) for name, pp in pipelines.items()}
    for it in iterators.values():
        throughput(it, warmup)  # tracing and warm-up
    # Alternate the pipelines in short rounds so that a change in machine load hits both alike.
    wall: dict[str, list[float]] = {name: [] for name in pipelines}
    cpu: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(rounds):
        for name, it in iterators.items():
            w, c = throughput(it, max(images // rounds, 1))
            wall[name].append(w)
            cpu[name].append(c)
    from bvbench.stats import Spread

    return {
        "workers": workers,
        "jpegs": len(jpegs),
        "mean_kib": float(np.mean([len(j) for j in jpegs]) / 1024),
        "pipelines": {
            name: {"pp": pp, "per_cpu_s": Spread.of(cpu[name]).to_dict(), "wall": Spread.of(wall[name]).to_dict()}
            for name, pp in pipelines.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="map threads (cores)")
    parser.add_argument("--images", type=int, default=2000, help="timed images per pipeline")
    parser.add_argument("--examples", type=int, default=256, help="distinct JPEGs")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed rounds per pipeline")
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()

    r = measure(args.workers, args.images, args.examples, args.rounds, args.warmup)
    print(f"{r['jpegs']} JPEGs, mean {r['mean_kib']:.0f} KiB; {args.workers} worker(s)")
    per_core = {name: p["per_cpu_s"]["median"] for name, p in r["pipelines"].items()}
    for name, p in r["pipelines"].items():
        print(
            f"{name:8s} {per_core[name]:7.1f} img per CPU-second (per core); "
            f"wall clock {p['wall']['median']:7.1f} img/s with {args.workers} worker(s)   {p['pp']}"
        )
    ratio = per_core["randaug"] / per_core["base"]
    print(f"randaug / base throughput per core: {ratio:.2f}; randaug costs {1 / ratio:.2f}x the CPU time per image")


if __name__ == "__main__":
    main()

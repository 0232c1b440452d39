"""``./pants run projects/uvim:mnist_demo``: UViM digit segmentation on MNIST-5k against a per-pixel baseline.

Trains ``bv.uvim.configs.mnist`` three times into ``--workdir``: ``stage1`` (the VQ-VAE
oracle), ``stage2`` (the language model, loading ``stage1`` through ``model_init``) and
``baseline`` (a ViT predicting every pixel's class), then prints and writes
``--workdir/results.md``: test mean IoU and pixel accuracy of each, with the oracle's
own reconstruction (stage I decoding the true codes: the ceiling of stage II), stage II's
code perplexity, parameter counts, training time (the trainer's ``train_seconds``: time in
training steps, compilation included) and the wall time of each ``bv-train`` call. A run
whose workdir holds a finished run is not trained again (its wall time is then only the
check; delete it to start over).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from bv.core import checkpoint, train

DEFAULT_WORKDIR = "runs/uvim_mnist"


def final_metrics(workdir: str) -> dict[str, float]:
    """The last logged value of each metric of a run."""
    final: dict[str, float] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            final.update({k: v for k, v in json.loads(line).items() if isinstance(v, (int, float))})
    return final


def count_params(workdir: str, skip: str | None = None) -> int:
    path = checkpoint.latest(workdir)
    assert path is not None
    flat = checkpoint.load_params(path)
    total = 0
    for key, value in flat.items():
        if key == skip:
            continue
        total += sum(int(np.size(x)) for x in _leaves(value))
    return total


def _leaves(tree: object) -> list:
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _leaves(v)]
    return [tree]


def run(name: str, arg: str, workdir: str, config: str = "bv.uvim.configs.mnist") -> float:
    print(f"== {name}: bv-train --config {config}:{arg} --workdir {workdir}", flush=True)
    start = time.perf_counter()
    train.main(["--config", f"{config}:{arg}", "--workdir", workdir])
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bv-uvim-mnist-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help="where the three runs' workdirs go")
    parser.add_argument("--steps", default="", help="steps of stage1,stage2,baseline (default: the config's)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    steps = [s for s in args.steps.split(",")] if args.steps else ["", "", ""]
    dirs = {k: os.path.join(args.workdir, k) for k in ("stage1", "stage2", "baseline")}

    def arg(base: str, i: int) -> str:
        return base + (f",steps={steps[i]}" if steps[i] else "")

    times = {
        "stage1": run("stage I", arg("stage=1", 0), dirs["stage1"]),
        "stage2": run("stage II", arg(f"stage=2,oracle={dirs['stage1']}", 1), dirs["stage2"]),
        "baseline": run("baseline", arg("stage=baseline", 2), dirs["baseline"]),
    }
    m = {k: final_metrics(d) for k, d in dirs.items()}
    lm_params = count_params(dirs["stage2"], skip="oracle")
    rows: list[tuple[Any, ...]] = [
        (
            "per-pixel ViT baseline",
            m["baseline"]["test/mean_iou"],
            m["baseline"]["test/pixel_accuracy"],
            f"{count_params(dirs['baseline']):,}",
            int(m["baseline"]["step"]),
            m["baseline"]["train_seconds"],
            times["baseline"],
        ),
        (
            "UViM (stage II, greedy codes)",
            m["stage2"]["test/mean_iou"],
            m["stage2"]["test/pixel_accuracy"],
            f"{lm_params:,} + oracle",
            int(m["stage2"]["step"]),
            m["stage2"]["train_seconds"],
            times["stage2"],
        ),
        (
            "stage I oracle (true codes)",
            m["stage2"]["oracle/mean_iou"],
            m["stage2"]["oracle/pixel_accuracy"],
            f"{count_params(dirs['stage1']):,}",
            int(m["stage1"]["step"]),
            m["stage1"]["train_seconds"],
            times["stage1"],
        ),
    ]
    lines = [
        "MNIST-5k digit segmentation (11 classes: background + 10 digits), 1,000 test digits, one run each.",
        "",
        "| model | test mean IoU | pixel accuracy | params | steps | training time | wall time of this call |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, iou, acc, params, n, trained, seconds in rows:
        lines.append(
            f"| {name} | {100 * iou:.1f}% | {100 * acc:.2f}% | {params} | {n} | {trained / 60:.1f} min "
            f"| {seconds / 60:.1f} min |"
        )
    lines += [
        "",
        f"Stage II code perplexity on test: {m['stage2']['perplexity/perplexity']:.2f} "
        f"(next-code accuracy {100 * m['stage2']['perplexity/code_accuracy']:.1f}%). Stage I's last logged batch "
        f"used {100 * (1 - m['stage1']['codebook_zeros_ratio']):.0f}% of the codewords (usage perplexity "
        f"{m['stage1']['codebook_perplexity']:.1f}).",
    ]
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.workdir, "results.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()

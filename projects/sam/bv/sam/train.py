"""``./pants run projects/sam:train``: the offline GSAM demo on MNIST-5k.

Trains ``bv.sam.configs.mnist`` once per ``--opts`` entry (default: ``none``, the plain
trainer, then ``gsam``) into ``--workdir/<opt>``, each with the same data, model, optimizer
and steps, and prints (and writes to ``--workdir/results.md``) a table of test accuracy,
test loss, the time spent in training steps (the trainer's ``train_seconds``) and the wall
time of the whole run (data, compilation, evaluations included). A run's workdir must not
exist yet: a resumed run would time only what was left.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

from bv.core import train

DEFAULT_WORKDIR = "runs/sam_mnist"


def _final(workdir: str) -> dict[str, float]:
    """The last logged value of each metric of a run."""
    final: dict[str, float] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            final.update({k: v for k, v in json.loads(line).items() if isinstance(v, (int, float))})
    return final


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bv-sam-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help="where the runs' workdirs go")
    parser.add_argument("--opts", default="none,gsam", help="comma-separated: none, sam, gsam")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each run")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    rows = []
    for opt in args.opts.split(","):
        workdir = os.path.join(args.workdir, f"{opt}_{args.epochs}ep")
        if os.path.exists(workdir):
            raise SystemExit(f"bv-sam-demo: {workdir} exists; remove it or give another --workdir.")
        print(f"MNIST-5k with opt={opt} for {args.epochs} epochs into {workdir}.", flush=True)
        start = time.perf_counter()
        train.main(["--config", f"bv.sam.configs.mnist:opt={opt},epochs={args.epochs}", "--workdir", workdir])
        rows.append((opt, time.perf_counter() - start, _final(workdir)))
    lines = [
        f"MNIST-5k, {args.epochs} epochs, one run each.",
        "",
        "| gradient | steps | test accuracy | test loss | training steps | wall time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for opt, seconds, final in rows:
        lines.append(
            f"| {opt} | {int(final['step'])} | {100 * final['test/prec@1']:.1f}% | {final['test/loss']:.4f} "
            f"| {final['train_seconds'] / 60:.1f} min | {seconds / 60:.1f} min |"
        )
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "results.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()

"""``./pants run projects/distill:train``: the offline distillation demo.

1. The teacher: the README's MNIST ViT in ``--teacher`` (trained there first when that
   workdir has no checkpoint).
2. Students from ``bv.distill.configs.distill_mnist``, each in ``--workdir/<mode>_<epochs>ep``:
   trained on the labels, and distilled from the teacher, for each length in ``--epochs``.
3. A table of test accuracy and agreement with the teacher, printed and written to
   ``--workdir/results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from bv.core import train
from bv.vit.train import ensure_trained

DEFAULT_WORKDIR = "runs/distill_mnist"


def _final(workdir: str) -> dict[str, float]:
    """The last logged value of each metric of a run."""
    final: dict[str, float] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            final.update({k: v for k, v in json.loads(line).items() if isinstance(v, (int, float))})
    return final


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bv-distill-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="runs/vit_mnist", help="the teacher's workdir")
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help="where the students' workdirs go")
    parser.add_argument("--epochs", default="10,30", help="comma-separated schedule lengths")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    ensure_trained(args.teacher)
    rows = []
    for epochs in (int(e) for e in args.epochs.split(",")):
        result: dict[str, Any] = {"epochs": epochs}
        for mode in ("labels", "distill"):
            workdir = os.path.join(args.workdir, f"{mode}_{epochs}ep")
            spec = f"bv.distill.configs.distill_mnist:mode={mode},epochs={epochs},teacher={args.teacher}"
            print(f"Student ({mode}, {epochs} epochs) into {workdir}.", flush=True)
            train.main(["--config", spec, "--workdir", workdir])
            result[mode] = _final(workdir)
        rows.append(result)
    teacher = _final(args.teacher)
    lines = [
        f"Teacher: {100 * teacher['test/prec@1']:.1f}% test accuracy on MNIST-5k.",
        "",
        "| epochs | steps | labels only: test acc. | distilled: test acc. | distilled: agreement@1 with the teacher |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        d, lab = r["distill"], r["labels"]
        lines.append(
            f"| {r['epochs']} | {int(d['step'])} | {100 * lab['test/prec@1']:.1f}% | {100 * d['test/prec@1']:.1f}% "
            f"| {100 * d['teacher_distance/agree@1']:.1f}% |"
        )
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.workdir, "results.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()

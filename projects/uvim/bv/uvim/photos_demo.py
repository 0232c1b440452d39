"""``./pants run projects/uvim:photos_demo``: UViM colorization of scikit-image's photographs, offline.

Trains ``bv.uvim.configs.photos`` stage I then stage II (loading stage I through
``model_init``) into ``--workdir``, then prints and writes ``--workdir/results.md``: the test
crops' PSNR of stage II's colours (greedy codes), of the oracle (stage I decoding the true
codes), and of the grey input itself (the "predict the grey image" baseline).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from bv.uvim.mnist_demo import final_metrics, run

DEFAULT_WORKDIR = "runs/uvim_photos"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bv-uvim-photos-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help="where the two runs' workdirs go")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    stage1, stage2 = os.path.join(args.workdir, "stage1"), os.path.join(args.workdir, "stage2")
    run("stage I", "stage=1", stage1, config="bv.uvim.configs.photos")
    run("stage II", f"stage=2,oracle={stage1}", stage2, config="bv.uvim.configs.photos")
    m1, m2 = final_metrics(stage1), final_metrics(stage2)
    lines = [
        "Colorization of 500 32x32 test crops of two scikit-image photographs never seen in training.",
        "",
        "| prediction | test PSNR | steps | training time |",
        "|---|---:|---:|---:|",
        f"| the grey input (baseline) | {m2['test/psnr_grey_input']:.2f} dB | | |",
        f"| UViM (stage II, greedy codes) | {m2['test/psnr']:.2f} dB | {int(m2['step'])} "
        f"| {m2['train_seconds'] / 60:.1f} min |",
        f"| stage I oracle (true codes) | {m2['oracle/psnr']:.2f} dB | {int(m1['step'])} "
        f"| {m1['train_seconds'] / 60:.1f} min |",
        "",
        f"Stage II code perplexity on test: {m2['perplexity/perplexity']:.2f}.",
    ]
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.workdir, "results.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()

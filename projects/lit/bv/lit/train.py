"""``./pants run projects/lit:train``: the offline LiT demo, both stages.

Stage 1 trains the README's MNIST ViT (``bv.vit.configs.mnist``) into ``--vit_workdir``
unless a checkpoint is already there; stage 2 trains ``bv.lit.configs.lit_mnist`` on top
of it into ``--workdir``. Other arguments go to stage 2's ``bv-train`` (``--config ...``,
``--config.lr=...``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from bv.core import train
from bv.vit.train import ensure_trained

DEFAULT_CONFIG = "bv.lit.configs.lit_mnist"
DEFAULT_WORKDIR = "runs/lit_mnist"
DEFAULT_VIT_WORKDIR = "runs/vit_mnist"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--vit_workdir", default=DEFAULT_VIT_WORKDIR)
    known, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if any(a in ("-h", "--help") for a in rest):
        print(__doc__)
        train.main(rest, default_config=DEFAULT_CONFIG)
        return
    if not any(a == "--workdir" or a.startswith("--workdir=") for a in rest):
        rest += ["--workdir", DEFAULT_WORKDIR]
    if not any(a == "--config" or a.startswith("--config=") for a in rest):
        rest += ["--config", f"{DEFAULT_CONFIG}:vit_workdir={known.vit_workdir}"]

    print("Stage 1: the image tower.", flush=True)
    ensure_trained(known.vit_workdir)
    print(f"Stage 2: LiT with the MiniLM text tower ({' '.join(rest)}).", flush=True)
    train.main(rest, default_config=DEFAULT_CONFIG)


if __name__ == "__main__":
    main()

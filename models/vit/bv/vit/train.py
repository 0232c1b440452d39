"""``python -m bv.vit.train``: the bv trainer with ViT's MNIST config as the default.

With no arguments it trains ``bv.vit.configs.mnist`` into ``runs/vit_mnist``.
"""

from __future__ import annotations

import sys
from typing import Sequence

from bv.core import train

DEFAULT_CONFIG = "bv.vit.configs.mnist"
DEFAULT_WORKDIR = "runs/vit_mnist"


def ensure_trained(workdir: str = DEFAULT_WORKDIR) -> None:
    """Trains the default config into ``workdir`` unless a checkpoint is already there.

    Projects whose demos start from the README's MNIST ViT (bv-lit's LiT, bv-distill's teacher) call it.
    """
    from bv.core.model_init import bv_checkpoint_path

    try:
        trained = bv_checkpoint_path(workdir) is not None
    except FileNotFoundError:  # a workdir without a complete checkpoint
        trained = False
    if trained:
        print(f"Using the MNIST ViT in {workdir}.", flush=True)
        return
    print(f"Training the MNIST ViT into {workdir} ({DEFAULT_CONFIG}).", flush=True)
    train.main(["--config", DEFAULT_CONFIG, "--workdir", workdir])


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    gives_workdir = any(a == "--workdir" or a.startswith("--workdir=") for a in argv)
    if not gives_workdir and not any(a in ("-h", "--help") for a in argv):
        argv += ["--workdir", DEFAULT_WORKDIR]
    train.main(argv, default_config=DEFAULT_CONFIG)


if __name__ == "__main__":
    main()

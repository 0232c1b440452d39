"""``python -m bv.vit.train``: the bv trainer with ViT's MNIST config as the default.

With no arguments it trains ``bv.vit.configs.mnist`` into ``runs/vit_mnist``.
"""

from __future__ import annotations

import sys
from typing import Sequence

from bv.core import train

DEFAULT_CONFIG = "bv.vit.configs.mnist"
DEFAULT_WORKDIR = "runs/vit_mnist"


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    gives_workdir = any(a == "--workdir" or a.startswith("--workdir=") for a in argv)
    if not gives_workdir and not any(a in ("-h", "--help") for a in argv):
        argv += ["--workdir", DEFAULT_WORKDIR]
    train.main(argv, default_config=DEFAULT_CONFIG)


if __name__ == "__main__":
    main()

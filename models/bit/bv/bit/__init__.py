"""bv-bit: BiT ResNets (big_vision's v1 with GroupNorm and weight standardisation, and the BiT
paper's v2) with configs and Hub checkpoints.

``BiT`` and ``BiTPaper`` are the Hub models (``from_pretrained``, ``save_pretrained``,
``push_to_hub``); ``ResNet`` and ``ResNetV2`` are their Flax modules, registered as the ``bit`` and
``bit_paper`` models for configs (big_vision's names).
"""

from bv.core import registry
from bv.bit.version import __version__
from bv.bit.model import (
    BLOCK_SIZES,
    ResNet,
    ResNetV2,
    StdConv,
    block_sizes,
    create_model,
    create_paper_model,
    weight_standardize,
)
from bv.bit.pretrained import BiT, BiTPaper

registry.register_model("bit", create_model, hub_class=BiT)
registry.register_model("bit_paper", create_paper_model, hub_class=BiTPaper)

__all__ = [
    "__version__",
    "BLOCK_SIZES",
    "BiT",
    "BiTPaper",
    "ResNet",
    "ResNetV2",
    "StdConv",
    "block_sizes",
    "create_model",
    "create_paper_model",
    "weight_standardize",
]

"""bv-vit: the Vision Transformer (all big_vision variants), registered as the ``vit``
model.
"""

from bv.core import registry
from bv.vit.version import __version__
from bv.vit.model import (
    VARIANTS,
    ViT,
    create_model,
    decode_variant,
    posemb_sincos_2d,
    pyloop_to_scan,
    resample_posemb,
    scan_to_pyloop,
)

registry.models.register("vit")(create_model)

__all__ = [
    "__version__",
    "VARIANTS",
    "ViT",
    "create_model",
    "decode_variant",
    "posemb_sincos_2d",
    "pyloop_to_scan",
    "resample_posemb",
    "scan_to_pyloop",
]

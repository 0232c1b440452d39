"""bv-vit: the Vision Transformer (all big_vision variants).

``ViT`` is the Hub model (``ViT.from_pretrained``, ``save_pretrained``, ``push_to_hub``);
``VisionTransformer`` is its Flax module, registered as the ``vit`` model for configs.
"""

from bv.core import registry
from bv.vit.version import __version__
from bv.vit.model import (
    VARIANTS,
    VisionTransformer,
    create_model,
    decode_variant,
    posemb_sincos_2d,
    pyloop_to_scan,
    resample_posemb,
    scan_to_pyloop,
)
from bv.vit.patch_embed import PatchEmbedding, pi_resize_kernel
from bv.vit.pretrained import ViT
from bv.vit.flexi import FlexiClassificationTask

registry.register_model("vit", create_model, hub_class=ViT)

__all__ = [
    "__version__",
    "VARIANTS",
    "FlexiClassificationTask",
    "PatchEmbedding",
    "ViT",
    "VisionTransformer",
    "create_model",
    "decode_variant",
    "pi_resize_kernel",
    "posemb_sincos_2d",
    "pyloop_to_scan",
    "resample_posemb",
    "scan_to_pyloop",
]

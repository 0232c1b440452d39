"""bv.pp: preprocessing ops for tf.data, composed from strings like ``"decode|resize(224)"``.

Importing this package registers the general, image and augmentation ops in
``bv.core.registry.pp_ops``.
"""

from bv.pp import autoaugment, ops_general, ops_image, ops_more
from bv.pp.builder import get_preprocess_fn

__all__ = ["autoaugment", "get_preprocess_fn", "ops_general", "ops_image", "ops_more"]

"""bv.pp: preprocessing ops for tf.data, composed from strings like ``"decode|resize(224)"``.

Importing this package registers the general and image ops in ``bv.core.registry.pp_ops``.
"""

from bv.pp import ops_general, ops_image
from bv.pp.builder import get_preprocess_fn

__all__ = ["get_preprocess_fn", "ops_general", "ops_image"]

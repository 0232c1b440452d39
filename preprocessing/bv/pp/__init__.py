"""bv.pp: preprocessing ops for tf.data, composed from strings like ``"decode|resize(224)"``.

Importing this package registers the general, image, augmentation and text ops in
``bv.core.registry.pp_ops``, and the SentencePiece tokenizer in ``bv.core.registry.tokenizers``.
"""

from bv.pp import autoaugment, ops_general, ops_image, ops_more, ops_text, tokenizers
from bv.pp.builder import get_preprocess_fn

__all__ = ["autoaugment", "get_preprocess_fn", "ops_general", "ops_image", "ops_more", "ops_text", "tokenizers"]

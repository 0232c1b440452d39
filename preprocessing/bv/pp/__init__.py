"""bv.pp: preprocessing ops for tf.data, composed from strings like ``"decode|resize(224)"``.

Importing this package registers the general, image, augmentation and text ops in
``bv.core.registry.pp_ops``, and the SentencePiece tokenizer in ``bv.core.registry.tokenizers``.
"""

from bv.core.extras import require_train

require_train("bv.pp (the input pipeline's preprocessing ops)")

from bv.pp import autoaugment, ops_general, ops_image, ops_more, ops_text, tokenizers  # noqa: E402
from bv.pp.builder import get_preprocess_fn  # noqa: E402

__all__ = ["autoaugment", "get_preprocess_fn", "ops_general", "ops_image", "ops_more", "ops_text", "tokenizers"]

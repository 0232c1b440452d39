"""bv-lit: two-tower image-text models (LiT, CLIP-style, SigLIP) for the one bv trainer.

``TwoTowers`` pairs any registered bv image model with ``TextTransformer``
(big_vision's text tower) or ``BertEncoder`` (a BERT tower that loads Hugging Face
BertModel weights, e.g. MiniLM-L6 with ``load_hf_bert(minilm_path())``); it is
registered as the ``two_towers`` model (kind ``image_text``). ``ImageTextTask`` trains it as the ``image_text`` task with the
softmax contrastive or the sigmoid loss of ``bv.lit.losses``. ``TwoTowerModel`` is its
Hub class: ``save_pretrained``/``from_pretrained``/``push_to_hub``, big_vision two-tower
``.npz`` checkpoints, ``embed_image``/``embed_text``.
"""

from bv.core import registry
from bv.lit.version import __version__
from bv.lit.losses import chunked_sigmoid_loss, get_loss, sigmoid_loss, sigmoid_loss_sharded, softmax_contrastive_loss
from bv.lit.bert import BertEncoder, create_bert, load_hf_bert, minilm_path
from bv.lit.text_transformer import TextTransformer, create_text_transformer
from bv.lit.two_towers import TEXT_TOWERS, TwoTowers, create_two_towers
from bv.lit.task import ImageTextTask
from bv.lit.pretrained import TwoTowerModel

registry.register_model("two_towers", create_two_towers, hub_class=TwoTowerModel, kind="image_text")

__all__ = [
    "__version__",
    "BertEncoder",
    "ImageTextTask",
    "TEXT_TOWERS",
    "TextTransformer",
    "TwoTowerModel",
    "TwoTowers",
    "chunked_sigmoid_loss",
    "create_bert",
    "create_text_transformer",
    "create_two_towers",
    "get_loss",
    "load_hf_bert",
    "minilm_path",
    "sigmoid_loss",
    "sigmoid_loss_sharded",
    "softmax_contrastive_loss",
]

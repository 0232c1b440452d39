"""bv-mixer: MLP-Mixer (all big_vision variants: S, B, L, H with any patch size).

``Mixer`` is the Hub model (``Mixer.from_pretrained``, ``save_pretrained``, ``push_to_hub``;
timm folders and big_vision ``.npz`` files load too); ``MlpMixer`` is its Flax module,
registered as the ``mixer`` model for configs.
"""

from bv.core import registry
from bv.mixer.version import __version__
from bv.mixer.model import VARIANTS, MixerBlock, MlpBlock, MlpMixer, create_model, decode_variant
from bv.mixer.pretrained import Mixer

registry.register_model("mixer", create_model, hub_class=Mixer)

__all__ = [
    "__version__",
    "VARIANTS",
    "Mixer",
    "MixerBlock",
    "MlpBlock",
    "MlpMixer",
    "create_model",
    "decode_variant",
]

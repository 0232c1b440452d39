"""bv-mixer: MLP-Mixer (S, B, L, H) with configs and Hub checkpoints. The model arrives
with the model-zoo issue; today the package holds its version and build wiring.
"""

from bv.mixer.version import __version__

__all__ = ["__version__"]

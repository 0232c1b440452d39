"""bv-bit: BiT ResNets (v1 with GroupNorm and weight standardisation, v2) with configs and
Hub checkpoints. The models arrive with the model-zoo issue; today the package holds its
version and build wiring.
"""

from bv.bit.version import __version__

__all__ = ["__version__"]

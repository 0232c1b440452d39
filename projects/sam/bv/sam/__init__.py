"""bv-sam: SAM and GSAM sharpness-aware optimisation as a bv gradient transform. Not
implemented yet; today the package holds its version and build wiring.
"""

from bv.sam.version import __version__

__all__ = ["__version__"]

"""bv-uvim: UViM: a VQ-VAE stage I and a guided stage II. Not implemented yet; today the
package holds its version and build wiring.
"""

from bv.uvim.version import __version__

__all__ = ["__version__"]

"""``python -m bv``: the ``bv`` command (see :mod:`bv.core.command`).

``bv`` stays a PEP 420 namespace package: there is no ``bv/__init__.py``, and this
module, which only bv-core ships, is found through the namespace like any other.
"""

from bv.core.command import main

if __name__ == "__main__":
    main()

import re

import bv.bit
from bv.bit import version


def test_version_is_pep440_release_and_exported() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?", version.__version__), version.__version__
    assert bv.bit.__version__ == version.__version__

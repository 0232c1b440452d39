"""bv's benchmark suite: ``./pants run benchmarks:all -- [--quick]`` (see ``benchmarks/all.py``)."""

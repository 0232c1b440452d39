"""BiT training configs; load one by path or as ``--config bv.bit.configs.NAME[:ARGS]``."""

"""MLP-Mixer training configs; load one by path or as ``--config bv.mixer.configs.NAME[:ARGS]``."""

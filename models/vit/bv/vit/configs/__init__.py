"""ViT training configs; load one by path or as ``--config bv.vit.configs.NAME[:ARGS]``."""

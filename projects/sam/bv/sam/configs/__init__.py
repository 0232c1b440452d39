"""bv-sam's configs: ``bv.sam.configs.vit_i1k_gsam_no_aug`` (big_vision's GSAM ImageNet recipe) and
``bv.sam.configs.mnist`` (GSAM, SAM or neither on MNIST-5k, offline)."""

"""ViT-S/16 on ImageNet-1k: big_vision's baseline recipe (arXiv:2205.01580).

    bv-train --config bv.vit.configs.vit_s16_i1k --workdir runs/vit_s16_i1k
    bv-train --config bv.vit.configs.vit_s16_i1k:gpu8 --workdir runs/vit_s16_i1k_gpu8

The recipe: 90 epochs, batch 1024, Adam (bf16 first moment), lr 1e-3 with 10k
warmup steps and cosine decay, wd 1e-4, grad clip 1.0, sincos posemb, GAP
pooling, Inception crop, flips, RandAugment(2, 10) and mixup(0.2). big_vision
reaches 76.5% top-1 with it in 6-7 h on a TPU v3-8 (not run here: no ImageNet
or accelerator on the development machine). ``gpu8``: batch 512 and 30 epochs, for
one 8-GPU node (not measured here). Needs ``imagenet2012`` prepared in the
TFDS data dir. Arguments: ``gpu8``, ``variant`` (default S/16), ``runlocal``.
"""

import ml_collections

from bv.core.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, gpu8=False, variant="S/16", runlocal=False)
    config = ml_collections.ConfigDict()
    config.seed = 0

    pp_common = "|value_range(-1, 1)|onehot(1000, key='label', key_result='labels')|keep('image', 'labels')"
    config.input = dict(
        data=dict(name="imagenet2012", split="train[:99%]"),
        batch_size=512 if opts.gpu8 else 1024,
        shuffle_buffer_size=250_000,
        cache_raw=False,
        pp="decode_jpeg_and_inception_crop(224)|flip_lr|randaug(2, 10)" + pp_common,
    )
    config.total_epochs = 30 if opts.gpu8 else 90
    config.log_training_steps = 50
    config.ckpt_steps = 1000

    config.model_name = "vit"
    config.num_classes = 1000
    config.model = dict(variant=opts.variant, rep_size=True, pool_type="gap", posemb="sincos2d")
    config.loss = "softmax_xent"
    config.mixup = dict(p=0.2)

    config.optax_name = "scale_by_adam"
    config.optax = dict(mu_dtype="bfloat16")
    config.lr = 0.001
    config.wd = 0.0001
    config.schedule = dict(decay_type="cosine", warmup_steps=10_000)
    config.grad_clip_norm = 1.0

    pp_eval = "decode|resize_small(256)|central_crop(224)" + pp_common
    common = dict(type="classification", pp_fn=pp_eval, loss_name=config.loss, log_steps=2500)
    config.evals = dict(
        minival=dict(common, data=dict(name="imagenet2012", split="train[99%:]")),
        val=dict(common, data=dict(name="imagenet2012", split="validation")),
    )

    # Scale-out (see docs/scaling.md); change from the command line, e.g.
    # --config.sharding_strategy="[('.*', 'fsdp(axis=\'data\')')]" or --config.grad_accum_steps=4.
    config.mesh = [("data", -1)]
    config.sharding_strategy = [(".*", "replicate")]
    config.sharding_rules = [("act_batch", "data")]
    config.grad_accum_steps = 1

    if opts.runlocal:
        config.input.shuffle_buffer_size = 100
        config.input.batch_size = 8
        config.total_steps = 2
        del config.total_epochs
        config.schedule.warmup_steps = 1
        for evaluator in config.evals.values():
            evaluator.log_steps = 2
    return config

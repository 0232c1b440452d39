"""ViT pre-training on ImageNet-21k (big_vision's ``vit_i21k.py`` recipe).

    bv-train --config bv.vit.configs.vit_i21k:variant=B/16 --workdir runs/vit_b16_i21k

90 epochs at batch 4096 with Adam, lr 1e-3, 10k warmup steps, linear decay,
wd 1e-4, sigmoid cross-entropy over the 21,843 multi-label classes, and a
pre-logits layer. big_vision reports about three days on a TPU v3-32 for
B/16; not run here. Needs ``imagenet21k`` prepared in the TFDS data dir.
Arguments: ``variant`` (default B/16), ``runlocal``.
"""

import ml_collections

from bv.core.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, variant="B/16", runlocal=False)
    config = ml_collections.ConfigDict()
    config.seed = 0

    num_classes = 21843
    pp_common = f"|value_range(-1, 1)|onehot({num_classes}, key='labels', key_result='labels')|keep('image', 'labels')"
    config.input = dict(
        data=dict(name="imagenet21k", split="full[51200:]"),
        batch_size=4096,
        shuffle_buffer_size=250_000,
        pp="decode_jpeg_and_inception_crop(224)|flip_lr" + pp_common,
    )
    config.total_epochs = 90
    config.log_training_steps = 50
    config.ckpt_steps = 1000

    config.model_name = "vit"
    config.num_classes = num_classes
    config.model = dict(variant=opts.variant, pool_type="tok", posemb="learn", rep_size=True)
    config.loss = "sigmoid_xent"

    config.optax_name = "scale_by_adam"
    config.optax = dict(mu_dtype="bfloat16")
    config.lr = 0.001
    config.wd = 0.0001
    config.schedule = dict(decay_type="linear", warmup_steps=10_000, linear_end=1e-5)
    config.grad_clip_norm = 1.0

    pp_eval = "decode|resize_small(256)|central_crop(224)" + pp_common
    config.evals = dict(
        val=dict(
            type="classification",
            data=dict(name="imagenet21k", split="full[:25600]"),
            pp_fn=pp_eval,
            loss_name=config.loss,
            log_percent=0.1,
        )
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
        config.evals.val.log_steps = 2
        del config.evals.val.log_percent
    return config

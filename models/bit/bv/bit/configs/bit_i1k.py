"""BiT-ResNet-50x1 (v1, GroupNorm + weight standardisation) on ImageNet-1k: big_vision's recipe
(arXiv:1912.11370, upstream training on ILSVRC-2012).

    bv-train --config bv.bit.configs.bit_i1k --workdir runs/bit_i1k
    bv-train --config bv.bit.configs.bit_i1k:depth=101,width=2 --workdir runs/bit_r101x2_i1k

The recipe: 90 epochs at batch 4096, SGD with momentum (bf16 accumulator), lr 0.1 and wd 1e-4 per
256 examples (1.6 and 0.0016 here), 1k warmup steps then cosine decay, grad clip 1.0, Inception
crop and flips at 224 px. big_vision reports about 32 minutes on a TPU v3-128 for it; not run
here (this machine has no ImageNet). Needs ``imagenet2012``, ``imagenet_v2`` and
``imagenet2012_real`` prepared in the TFDS data dir (the last two for the ``v2`` and ``real`` evals).
Arguments: ``depth`` (26/50/101/152/200, default 50), ``width`` (multiplier, default 1),
``runlocal`` (a few steps of a ResNet-26x0.5 at 64 px, for smoke tests).
"""

import ml_collections

from bv.core.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, depth=None, width=None, runlocal=False)
    depth = opts.depth if opts.depth is not None else (26 if opts.runlocal else 50)
    width = float(opts.width) if opts.width is not None else (0.5 if opts.runlocal else 1.0)
    res = 64 if opts.runlocal else 224
    config = ml_collections.ConfigDict()
    config.seed = 0

    pp_common = "|value_range(-1, 1)|onehot(1000, key='{lbl}', key_result='labels')|keep('image', 'labels')"
    config.input = dict(
        data=dict(name="imagenet2012", split="train[:99%]"),
        batch_size=4096,
        shuffle_buffer_size=250_000,
        cache_raw=False,  # big_vision caches the raw train set, which needs up to 120 GB of RAM
        pp=f"decode_jpeg_and_inception_crop({res})|flip_lr" + pp_common.format(lbl="label"),
    )
    config.total_epochs = 90
    config.log_training_steps = 50
    config.ckpt_steps = 1000

    config.model_name = "bit"
    config.num_classes = 1000
    config.model = dict(depth=depth, width=width)
    config.loss = "softmax_xent"

    config.optax_name = "big_vision.momentum_hp"
    config.grad_clip_norm = 1.0
    # The linear scaling rule: sweep these along with the batch size.
    config.lr = 0.1 / 256 * config.input.batch_size
    config.wd = 1e-4 / 256 * config.input.batch_size
    config.schedule = dict(decay_type="cosine", warmup_steps=1000)

    pp_eval = f"decode|resize_small({res * 8 // 7})|central_crop({res})" + pp_common

    def evaluator(split: str, dataset: str = "imagenet2012", label: str = "label") -> dict:
        return dict(
            type="classification",
            data=dict(name=dataset, split=split),
            pp_fn=pp_eval.format(lbl=label),
            loss_name=config.loss,
            log_steps=1000,
            cache=True,
        )

    config.evals = dict(
        train=evaluator("train[:2%]"),
        minival=evaluator("train[99%:]"),
        val=evaluator("validation"),
        v2=evaluator("test", dataset="imagenet_v2"),
        real=evaluator("validation", dataset="imagenet2012_real", label="real_label"),
    )

    # Scale-out (see docs/scaling.md); change from the command line, e.g. --config.grad_accum_steps=4.
    config.mesh = [("data", -1)]
    config.sharding_strategy = [(".*", "replicate")]
    config.sharding_rules = [("act_batch", "data")]
    config.grad_accum_steps = 1

    if opts.runlocal:
        config.input.batch_size = 8
        config.input.shuffle_buffer_size = 100
        config.total_steps = 2
        del config.total_epochs
        config.log_training_steps = 1
        config.schedule.warmup_steps = 1
        config.evals = dict(val=dict(config.evals.val, log_steps=2, cache=False))
    return config

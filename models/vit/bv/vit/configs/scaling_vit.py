"""ViT-g/14 and ViT-G/14 pre-training, the recipe of "Scaling Vision Transformers" (arXiv:2106.04560).

    bv-train --config bv.vit.configs.scaling_vit:variant=g/14 --workdir runs/vit_g14_i21k
    bv-train --config bv.vit.configs.scaling_vit:variant=G/14 --workdir runs/vit_G14_i21k
    bv-train --config bv.vit.configs.scaling_vit:variant=g/14,gpu8 --workdir runs/vit_g14_i21k_gpu8
    bv-train --config bv.vit.configs.scaling_vit:variant=mu/14,dataset=i1k,runlocal --workdir /tmp/svit_smoke

The paper's recipe, as in big_vision's ``proj/scaling_laws/train_vit_g.py``: Zhai et al.'s
Adafactor (``big_vision.scale_by_adafactor``: factored second moment whose decay rises as
``1 - k^-0.8`` up to 0.999, no update clipping, momentum 0.9 kept in bfloat16), lr 8e-4 with a
reciprocal-square-root decay after a linear warmup and a linear cooldown to 0 at the end,
decoupled weight decay of 0.03 x lr on the body and 100 times that (3.0 x lr) on the head,
grad clip 1.0, a zero-initialised head after multihead attention pooling (``pool_type="map"``,
no [cls] token), learned position embedding, Inception crop and flips at 224 px, sigmoid
cross-entropy. Scale-out: the blocks are stacked with ``model.scan=True`` and rematerialised
(``remat_policy="nothing_saveable"``: only each block's input is kept for the backward pass),
matmuls run in bfloat16 (parameters stay float32), and parameters and optimizer state are
sharded FSDP-style over a one-axis ``data`` mesh of all devices (docs/scaling.md).

Departures from the paper. JFT-3B is not public, so the data is ImageNet-21k (``dataset=i21k``,
21,843 classes) or ImageNet-1k (``dataset=i1k``, TFDS ``imagenet2012``), and the run is short:
2 epochs of ImageNet-21k (about 28M examples, ~6.9k steps at batch 4096) or 20 of ImageNet-1k
(about 25M examples), with warmup over the first 10% of steps, an rsqrt timescale of 1k steps and
a cooldown over the last 20%; big_vision's reference run is 1M steps at batch 16,384 on JFT-3B.
Longer runs: ``--config.total_epochs=N`` (the warmup and cooldown follow as fractions; raise
``--config.schedule.timescale`` with the number of steps). TFDS has no public ImageNet-21k
builder: prepare it yourself as a TFDS data set named ``imagenet21k`` in the TFDS data dir, with
an ``image`` and a ``labels`` feature (one class id or a list of them) and a ``full`` split, as
for ``vit_i21k``. The paper also starts the head bias at -10; bv's ViT has no option for a head
bias init, so it starts at 0.

What the paper reaches (with JFT-3B, not with this data): ViT-G/14, about 1.8B parameters, 90.45%
ImageNet top-1 after fine-tuning and 84.86% ImageNet 10-shot accuracy with a linear classifier on
frozen features. It counts 1,011M parameters for ViT-g/14 and 1,843M for ViT-G/14: the patch
embedding, position embedding and transformer blocks, without the MAP head (25M for g, 38M for G)
and the classifier (31M for g, 36M for G with 21,843 classes), which
``tests/scaling_vit_configs_test.py`` checks. For this ImageNet-21k schedule no result is
published and none was measured here: expect a usable but clearly under-trained model.

Hardware and duration (estimates from FLOP counts, not measured: the development machine has no
accelerator). A 224 px image costs about 0.53 TFLOPs forward for g/14 and 0.97 for G/14 (2 FLOPs
per multiply-add); a training step with remat costs about 4x that. The 2-epoch ImageNet-21k run
of g/14 is thus about 6e19 FLOPs: at 40% utilisation roughly 2.5 h on a TPU v4-128 slice (64 chips)
or 5-6 h on one node of 8 H100 80 GB; G/14 takes about 1.8x as long. ``gpu8``: the same global
batch of 4096 in 2 accumulated micro-batches (256 images per GPU per micro-batch), for one node of
8 GPUs with 80 GB each.

Arguments: ``variant`` (``g/14`` default, ``G/14``, or any ViT size such as ``mu/14`` for a tiny
copy with the same recipe), ``dataset`` (``i21k`` default, ``i1k``), ``gpu8``, ``runlocal`` (two
steps at batch 8, evals on 16 images; with ``variant=mu/14`` it runs in about a minute on a CPU).
"""

import ml_collections

from bv.core.config import parse_arg

# name: (TFDS name, label key, num_classes, train split, evals {name: split}, epochs)
DATASETS = {
    "i21k": ("imagenet21k", "labels", 21843, "full[51200:]", {"val": "full[:25600]"}, 2),
    "i1k": ("imagenet2012", "label", 1000, "train[:99%]", {"minival": "train[99%:]", "val": "validation"}, 20),
}
BASE_LR = 8e-4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, variant="g/14", dataset="i21k", gpu8=False, runlocal=False)
    if opts.dataset not in DATASETS:
        raise ValueError(f"scaling_vit: unknown dataset {opts.dataset!r}; known: {', '.join(DATASETS)}.")
    tfds_name, label_key, num_classes, train_split, eval_splits, epochs = DATASETS[opts.dataset]
    config = ml_collections.ConfigDict()
    config.seed = 0

    pp_common = (
        f"|value_range(-1, 1)|onehot({num_classes}, key='{label_key}', key_result='labels')|keep('image', 'labels')"
    )
    config.input = dict(
        data=dict(name=tfds_name, split=train_split),
        batch_size=4096,
        shuffle_buffer_size=250_000,
        cache_raw=False,
        pp="decode_jpeg_and_inception_crop(224)|flip_lr" + pp_common,
    )
    config.total_epochs = epochs
    config.log_training_steps = 50
    config.ckpt_steps = 1000

    config.model_name = "vit"
    config.num_classes = num_classes
    config.model = dict(
        variant=opts.variant,
        pool_type="map",
        posemb="learn",
        head_zeroinit=True,
        scan=True,
        remat_policy="nothing_saveable",
        dtype_mm="bfloat16",
    )
    config.loss = "sigmoid_xent"

    config.optax_name = "big_vision.scale_by_adafactor"
    config.optax = dict(
        decay_rate=0.8, beta2_cap=0.999, clipping_threshold=None, momentum=0.9, dtype_momentum="bfloat16"
    )
    config.lr = BASE_LR
    # Decoupled weight decay (scaled by the schedule, not by the lr): 0.03 x lr on the body, 3.0 x lr on the head.
    config.wd = 0.03 * BASE_LR
    config.wd_mults = [("head/kernel", 100.0), (".*/kernel", 1.0)]
    config.schedule = dict(decay_type="rsqrt", timescale=1000, warmup_percent=0.1, cooldown_percent=0.2)
    config.grad_clip_norm = 1.0

    pp_eval = "decode|resize_small(256)|central_crop(224)" + pp_common
    config.evals = {
        name: dict(
            type="classification",
            data=dict(name=tfds_name, split=split),
            pp_fn=pp_eval,
            loss_name=config.loss,
            log_percent=0.1,
        )
        for name, split in eval_splits.items()
    }

    # Scale-out (see docs/scaling.md): FSDP over one data axis of all devices. Leaves under 4 MiB (the
    # factored second-moment statistics, LayerNorms, biases) stay whole on each device.
    config.mesh = [("data", -1)]
    config.sharding_strategy = [(".*", "fsdp(axis='data')")]
    config.sharding_rules = [("act_batch", "data")]
    config.grad_accum_steps = 2 if opts.gpu8 else 1

    if opts.runlocal:
        config.input.shuffle_buffer_size = 100
        config.input.batch_size = 8
        config.total_steps = 2
        del config.total_epochs
        config.log_training_steps = 1
        for evaluator in config.evals.values():
            evaluator.data.split = evaluator.data.split.split("[")[0] + "[:16]"
            evaluator.log_steps = 2
            del evaluator.log_percent
    return config

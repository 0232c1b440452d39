"""Distilling BiT-R152x2 into BiT-R50x1 on ImageNet-1k (arXiv:2106.05237), big_vision's ``bit_i1k``.

    bv-train --config "bv.distill.configs.bit_i1k:teacher=/models/bit_m_r152x2_i1k.npz" --workdir runs/distill_i1k

Function matching at ImageNet scale: both networks see the same Inception crop, flip and
mixup (p=1) of each image; the student (``bit_paper`` R50x1, i.e. BiT's v2 ResNet) minimises
KL(teacher || student) at temperature 1 with Adam (bf16 first moment), lr 0.03, wd 3e-4,
5k warmup steps and cosine decay, batch 4096. The paper's point: it needs patience
(1200 epochs here; 300 epochs take about 15 h on a TPU v3-32 in big_vision, where the
student reaches 80% and more after 1200+). ``teacher`` is anything bv loads a ``bit_paper``
model from (a bv folder or Hub repo, big_vision's BiT ``.npz``), with ``teacher_depth`` and
``teacher_width`` its size. Evaluations: the student's and the teacher's accuracy on
ImageNet validation, ImageNet-v2 and ReaL, and their distance (KL, agreement@1/5). Not run
here (no ImageNet or accelerator on the development machine); tests train it for two steps on
TFDS mock data with ``runlocal`` (tiny ResNets at 32 px, ``teacher`` a test-made folder).
"""

import ml_collections

from bv.core.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, teacher="", teacher_depth=152, teacher_width=2.0, epochs=1200, runlocal=False)
    if not opts.teacher:
        raise ValueError("bit_i1k needs teacher=<a bv folder, Hub repo or big_vision .npz of a BiT (bit_paper) model>.")
    res = 32 if opts.runlocal else 224
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = "distill"

    pp_common = "|value_range(-1, 1)|onehot(1000, key='{lbl}', key_result='labels')|keep('image', 'labels')"
    config.input = dict(
        data=dict(name="imagenet2012", split="train[:98%]"),
        batch_size=4096 if not opts.runlocal else 8,
        shuffle_buffer_size=250_000 if not opts.runlocal else 10,
        pp=f"decode_jpeg_and_inception_crop({res})|flip_lr" + pp_common.format(lbl="label"),
    )
    config.mixup = dict(p=1.0, n=2)
    if opts.runlocal:
        config.total_steps = 2
    else:
        config.total_epochs = opts.epochs
    config.log_training_steps = 50 if not opts.runlocal else 1
    config.ckpt_steps = 1000
    config.keep_ckpt_steps = 20_000

    config.model_name = "bit_paper"
    config.num_classes = 1000
    config.model = dict(depth=50, width=1.0) if not opts.runlocal else dict(depth=26, width=0.5)
    size = dict(depth=opts.teacher_depth, width=opts.teacher_width) if not opts.runlocal else dict(depth=26, width=0.5)
    teacher = dict(model_name="bit_paper", model=size)
    config.teachers = {"prof_m": dict(init=opts.teacher, resolution=res, **teacher)}
    config.distance = "kl"
    config.temperature = 1.0

    config.optax_name = "scale_by_adam"
    config.optax = dict(mu_dtype="bfloat16")
    config.grad_clip_norm = 1.0
    config.lr = 0.03
    config.wd = 0.0003
    config.schedule = dict(decay_type="cosine", warmup_steps=5000 if not opts.runlocal else 1)

    def split(full: str) -> str:
        return full if not opts.runlocal else f"{full.split('[')[0]}[:16]"

    crop = f"resize_small({res * 8 // 7})|central_crop({res})"
    pp_eval = "decode|" + crop + pp_common
    config.evals = {}
    # The teacher does not change: it is evaluated rarely.
    for who, pred, steps in (("student", "predict", 1000), ("teacher", "teacher", 100_000)):
        base = dict(type="classification", pred=pred, loss_name="softmax_xent", pp_fn=pp_eval.format(lbl="label"))
        every = dict(log_steps=steps if not opts.runlocal else 2)
        config.evals[f"{who}_val"] = dict(base, data=dict(name="imagenet2012", split=split("validation")), **every)
        config.evals[f"{who}_v2"] = dict(base, data=dict(name="imagenet_v2", split=split("test")), **every)
        real = dict(base, pp_fn=pp_eval.format(lbl="real_label"))
        config.evals[f"{who}_real"] = dict(
            real, data=dict(name="imagenet2012_real", split=split("validation")), **every
        )
    config.evals.distance_val = dict(
        type="distance",
        data=dict(name="imagenet2012", split=split("validation")),
        pp_fn="decode|" + crop + "|value_range(-1, 1)",
        ks=(1, 5),
        log_steps=1000 if not opts.runlocal else 2,
    )
    if opts.runlocal:  # smoke tests: one eval of each kind
        for name in ("student_v2", "student_real", "teacher_v2", "teacher_real"):
            del config.evals[name]
    config.mesh = [("data", -1)]
    config.sharding_strategy = [(".*", "replicate")]
    return config

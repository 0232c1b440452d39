"""Distilling BiT-R152x2 into BiT-R50x1 on Flowers-102 or Oxford-IIIT Pet (arXiv:2106.05237).

    bv-train --config "bv.distill.configs.flowers_pet:data=pet,variant=fast,teacher=/models/bit_r152x2_pet.npz" \
        --workdir runs/distill_pet

big_vision's ``bigsweep_flowers_pet``: small data sets, many epochs. Both networks see the
same Inception crop (128 px), flip and mixup (p=1); the student minimises KL(teacher ||
student) at the temperature the paper's sweep found best for each data set and schedule.
``variant`` picks the schedule and its best settings (Fig. 3 / Tab. 4 of the paper):

=========  ============  ======  ======  =====  ============  ======  ======  =====
           flowers                               pet
variant    epochs        t       lr      wd     epochs        t       lr      wd
=========  ============  ======  ======  =====  ============  ======  ======  =====
fast       10,000        10      3e-3    3e-4   1,000         5       1e-2    1e-3
medium     100,000       1       1e-3    1e-4   3,000         10      3e-3    3e-4
long       1,000,000     1       3e-4    1e-5   30,000        2       3e-3    1e-5
=========  ============  ======  ======  =====  ============  ======  ======  =====

In big_vision the ``fast`` variants take about 1 h 10 min (flowers) and 28 min (pet) on a
TPU v2-8. ``teacher`` is anything bv loads a ``bit_paper`` model from (a BiT R152x2 fine-tuned
on the data set at 128 px). Not run here (no such data or accelerator on the development
machine); tests train it for two steps on TFDS mock data with ``runlocal``.
"""

import ml_collections

from bv.core.config import parse_arg

DATA = {
    "flowers": dict(name="oxford_flowers102", train="train", val="validation", test="test", classes=102),
    "pet": dict(name="oxford_iiit_pet", train="train[:90%]", val="train[90%:]", test="test", classes=37),
}
# (epochs, temperature, lr, wd) per data set and variant.
SETTINGS = {
    "flowers": {
        "fast": (10_000, 10.0, 3e-3, 3e-4),
        "medium": (100_000, 1.0, 1e-3, 1e-4),
        "long": (1_000_000, 1.0, 3e-4, 1e-5),
    },
    "pet": {"fast": (1_000, 5.0, 1e-2, 1e-3), "medium": (3_000, 10.0, 3e-3, 3e-4), "long": (30_000, 2.0, 3e-3, 1e-5)},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, data="flowers", variant="medium", teacher="", runlocal=False)
    if opts.data not in DATA or opts.variant not in SETTINGS["pet"]:
        raise ValueError(
            f"flowers_pet: data must be flowers or pet and variant fast, medium or long; got {opts.data!r}, "
            f"{opts.variant!r}."
        )
    if not opts.teacher:
        raise ValueError(
            "flowers_pet needs teacher=<a bv folder, Hub repo or big_vision .npz of a BiT (bit_paper) model>."
        )
    data = DATA[opts.data]
    epochs, temperature, lr, wd = SETTINGS[opts.data][opts.variant]
    res = 32 if opts.runlocal else 128
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = "distill"

    pp_common = (
        f"|value_range(-1, 1)|onehot({data['classes']}, key='label', key_result='labels')|keep('image', 'labels')"
    )
    config.input = dict(
        data=dict(name=data["name"], split=data["train"]),
        batch_size=512 if not opts.runlocal else 8,
        shuffle_buffer_size=50_000 if not opts.runlocal else 10,
        cache_raw=True,
        pp=f"decode|inception_crop({res})|flip_lr" + pp_common,
    )
    config.mixup = dict(p=1.0, n=2)
    if opts.runlocal:
        config.total_steps = 2
    else:
        config.total_epochs = epochs
    config.log_training_steps = 100 if not opts.runlocal else 1
    config.ckpt_steps = 2500

    config.model_name = "bit_paper"
    config.num_classes = data["classes"]
    config.model = dict(depth=50, width=1.0) if not opts.runlocal else dict(depth=26, width=0.5)
    config.teachers = {
        "prof_m": dict(
            init=opts.teacher,
            model_name="bit_paper",
            model=dict(depth=152, width=2.0) if not opts.runlocal else dict(depth=26, width=0.5),
            resolution=res,
        )
    }
    config.distance = "kl"
    config.temperature = temperature

    config.optax_name = "scale_by_adam"
    config.optax = dict(mu_dtype="bfloat16")
    config.grad_clip_norm = 1.0
    config.lr = lr
    config.wd = wd
    config.schedule = dict(decay_type="cosine", warmup_steps=1500 if not opts.runlocal else 1)

    def split(name: str) -> str:
        full = str(data[name])
        return full if not opts.runlocal else f"{full.split('[')[0]}[:16]"

    pp_eval = f"decode|resize_small({res * 5 // 4})|central_crop({res})" + pp_common
    config.evals = {}
    for who, pred, every in (("student", "predict", 500), ("teacher", "teacher", 100_000)):
        for part in ("val", "test"):
            config.evals[f"{who}_{part}"] = dict(
                type="classification",
                pred=pred,
                data=dict(name=data["name"], split=split(part)),
                pp_fn=pp_eval,
                loss_name="softmax_xent",
                log_steps=every if not opts.runlocal else 2,
            )
    config.evals.distance_test = dict(
        type="distance",
        data=dict(name=data["name"], split=split("test")),
        pp_fn=f"decode|resize_small({res * 5 // 4})|central_crop({res})|value_range(-1, 1)",
        temperature=temperature,
        ks=(1, 5),
        log_steps=1000 if not opts.runlocal else 2,
    )
    if opts.runlocal:  # smoke tests: one eval of each kind
        for name in ("student_val", "teacher_val"):
            del config.evals[name]
    config.mesh = [("data", -1)]
    config.sharding_strategy = [(".*", "replicate")]
    return config

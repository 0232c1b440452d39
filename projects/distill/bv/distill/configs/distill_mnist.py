"""Function matching on MNIST-5k: a small ViT student distilled from the README's MNIST ViT.

    ./pants run projects/distill:train    # teacher (if needed), then students: labels vs distilled, short vs long
    bv-train --config bv.distill.configs.distill_mnist --workdir runs/distill_mnist          # one distilled student
    bv-train --config bv.distill.configs.distill_mnist:mode=labels --workdir runs/student    # its label-only twin

The teacher is ``bv.vit.configs.mnist`` (width 96, 4 layers, 98% test accuracy), read
from its workdir (``teacher``, default ``runs/vit_mnist``). The student is a ViT a tenth
of its size (width 32, 2 layers). ``mode=distill`` (the default) trains it by function
matching: teacher and student see the same randomly cropped images, mixed by mixup with
a uniform coefficient (``config.mixup``, applied once by the trainer), and the student
minimises KL(teacher || student). ``mode=labels`` trains the same student on the labels
with the teacher's own recipe (its affine warps, crops and label smoothing; no mixup), the
baseline. ``epochs`` sets the length: the paper's point is that function matching needs a
long ("patient") schedule to overtake label training. Both report test accuracy and the ``distance`` to the teacher (agreement,
KL). Measured figures: the bv-distill README. Arguments: ``teacher``, ``mode``, ``epochs``,
``runlocal`` (a few steps, for smoke tests).
"""

import ml_collections

from bv.core.config import parse_arg
from bv.vit.configs import mnist

STUDENT = dict(patch_size=(4, 4), width=32, depth=2, num_heads=2, mlp_dim=128, pool_type="gap", posemb="sincos2d")
PP_TEST = "decode(channels=1)|resize(32)|central_crop(28)|value_range(-1, 1)"
PP_LABELS = "onehot(10, key='label', key_result='labels')|keep('image', 'labels')"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, teacher="runs/vit_mnist", mode="distill", epochs=30, runlocal=False)
    if opts.mode not in ("distill", "labels"):
        raise ValueError(f"distill_mnist: mode must be 'distill' or 'labels', got {opts.mode!r}.")
    config = mnist.get_config("runlocal" if opts.runlocal else None)  # data, optimizer, evals of the teacher's run
    config.model = dict(STUDENT) if not opts.runlocal else dict(config.model)
    config.total_epochs = opts.epochs
    config.ema = None
    if "fewshot" in config.evals:  # the teacher's few-shot probes: not what this run measures
        del config.evals.fewshot

    if opts.mode == "distill":
        config.task = "distill"
        config.teachers = {"vit": dict(init=opts.teacher)}
        config.distance = "kl"
        config.temperature = 1.0
        config.mixup = dict(p=1.0)  # a uniform mixing coefficient: every batch is new to the student
        config.input.pp = f"decode(channels=1)|resize(32)|random_crop(28)|value_range(-1, 1)|{PP_LABELS}"
        # How close the student gets to its teacher on held-out images.
        config.evals.teacher_distance = dict(
            type="distance", data=dict(name="mnist5k", split="test"), pp_fn=PP_TEST, log_percent=0.5, ks=(1, 2)
        )
    if opts.runlocal:
        config.total_steps = 4
        del config.total_epochs
        config.evals.test.log_steps = 4
        if "teacher_distance" in config.evals:
            config.evals.teacher_distance.log_steps = 4
            del config.evals.teacher_distance["log_percent"]
    return config

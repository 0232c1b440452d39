"""Stage-I models as Hub folders, and reading them back into stage II's ``oracle``.

:func:`save_stage1` writes a stage-I run (a workdir's latest checkpoint) as a bv Hub
folder: ``config.json`` (``model_name`` ``uvim_vqvae``, the model's settings, the
adapter in ``extra``, the weights' sha256) and ``model.safetensors`` (the params and
the codebook, ``state/dictionary`` and ``state/counts``, with flat ``/``-joined names).
``push_to_hub`` style uploads are ``huggingface_hub.upload_folder`` of that folder.

:class:`UvimHub` is the Hub class of the stage-II model ``uvim_vtt``: it lets
``config.model_init = dict(oracle=FOLDER_OR_REPO)`` load such a folder (or a Hub repo
holding one) into the oracle, checking the weights and that the codebook fits.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Sequence

import numpy as np

from bv.core import checkpoint
from bv.core.hub.config import CONFIG_FILE, WEIGHTS_SHA256, HubConfig, read_json, write_config
from bv.core.hub.fit import fit_params
from bv.core.hub.weights import file_sha256, read_weights, write_weights
from bv.core.model_init import bv_checkpoint_path
from bv.core.tree import flatten_with_names
from bv.uvim.version import __version__

STAGE1_MODEL = "uvim_vqvae"


def save_stage1(source: str, folder: str) -> str:
    """Writes the stage-I run ``source`` (a workdir or checkpoint) as a Hub folder; returns ``folder``."""
    ckpt, run_config = read_run(source, "uvim_vqvae")
    config = HubConfig(
        model_name=STAGE1_MODEL,
        model=run_config.get("model", {}),
        package="bv-uvim",
        version=__version__,
        extra={"uvim": run_config.get("uvim", {}), "source": os.path.abspath(source)},
    )
    return write_folder(folder, config, checkpoint.load_params(ckpt))


_EXPORTERS = {"uvim_vqvae": ("stage-I", "save_stage1"), "uvim": ("stage-II", "save_uvim")}


def read_run(source: str, task: str) -> tuple[str, dict[str, Any]]:
    """(the checkpoint, the run's config) of ``source`` (a workdir or checkpoint), a run of ``task``."""
    stage, _ = _EXPORTERS[task]
    ckpt = bv_checkpoint_path(source)
    if ckpt is None:
        raise FileNotFoundError(f"{source!r} is not a bv workdir or checkpoint of a {stage} run.")
    workdir = (
        source
        if os.path.isdir(os.path.join(source, checkpoint.CHECKPOINTS_DIR))
        else os.path.dirname(os.path.dirname(ckpt))
    )
    with open(os.path.join(workdir, "config.json")) as f:
        run_config: dict[str, Any] = json.load(f)
    found = run_config.get("task")
    if found != task:
        other = _EXPORTERS.get(str(found))
        hint = f" (export a {other[0]} run with bv.uvim.{other[1]})" if other else ""
        raise ValueError(f"{source!r} is a run of task {found!r}, not a {stage} {task!r} run{hint}.")
    return ckpt, run_config


def write_folder(folder: str, config: HubConfig, params: Any) -> str:
    """``config.json`` and the flat weights of ``params`` in ``folder``, moved in only once all are written."""
    flat = {name: np.asarray(v) for name, v in flatten_with_names(params)}
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bv-save-", dir=folder) as tmp:
        written = write_weights(tmp, flat)
        sha = {f: file_sha256(os.path.join(tmp, f)) for f in written if f.endswith(".safetensors")}
        write_config(os.path.join(tmp, CONFIG_FILE), config, weights_sha256=sha)
        for name in [*written, CONFIG_FILE]:
            os.replace(os.path.join(tmp, name), os.path.join(folder, name))
    return folder


def local_folder(source: str, revision: str | None) -> str:
    """``source`` itself when it is a folder, else the local snapshot of the Hub repo it names."""
    if os.path.isdir(source):
        return source
    from huggingface_hub import snapshot_download

    return snapshot_download(source, revision=revision)


class UvimHub:
    """The Hub class of ``uvim_vtt``: reads stage-I Hub folders into the ``oracle`` part (see the module docstring)."""

    # bv export writes image models; it says this instead for a UViM run.
    export_hint = (
        " A UViM stage II is written by bv.uvim.save_uvim(workdir, folder) and loaded by"
        " bv.uvim.UvimModel.from_pretrained(folder); a stage I by bv.uvim.save_stage1(workdir, folder)."
    )

    @classmethod
    def adapt_param(cls, name: str, value: np.ndarray, shape: tuple[int, ...], config: HubConfig) -> None:
        return None  # nothing is resized: a stage I either fits or is refused

    @classmethod
    def load_part_params(
        cls,
        part: str,
        source: str,
        target: HubConfig,
        init: Any,
        *,
        dont_load: Sequence[str] = (),
        revision: str | None = None,
    ) -> Any:
        what = f"config.model_init[{part!r}]={source!r}"
        if part != "oracle":
            raise ValueError(f"{what}: uvim_vtt loads Hub folders only into its 'oracle' (a stage-I model).")
        folder = local_folder(source, revision)
        stored = read_json(os.path.join(folder, CONFIG_FILE))
        if stored.get("model_name") != STAGE1_MODEL:
            raise ValueError(
                f"{what} holds a {stored.get('model_name')!r} model, not a UViM stage I ({STAGE1_MODEL!r})."
            )
        flat = read_weights(folder, sha256=stored.get(WEIGHTS_SHA256))
        return fit_params(flat, init, dont_load=dont_load, what=what)

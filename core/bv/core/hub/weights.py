"""Model weights as safetensors files: flat `/`-joined names, sharded above a size limit.

One file ``model.safetensors`` holds all weights (metadata ``format: flax``), or,
above ``max_shard_bytes``, several ``model-00001-of-0000N.safetensors`` files
and a ``model.safetensors.index.json`` that maps each name to its file (the
layout ``transformers`` and ``timm`` use). Reading checks everything it is
given: file names, the JSON index, each file's header and that the arrays are
complete, so a truncated or corrupt download gives a clear error, never garbage
weights. Nothing here unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

from bv.core.errors import UserError

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
_SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
# What to do about a damaged weights file, said by every error about one.
_FIX = (
    "Download it again (for a Hub repo: from_pretrained(..., force_download=True), or delete it from the Hub "
    "cache), or write the folder again (save_pretrained, bv-export)."
)
_PICKLE_WEIGHTS = ("pytorch_model.bin", "model.bin", "flax_model.msgpack", "model.ckpt", "model.pt", "model.pth")


class WeightsError(UserError, ValueError):
    """Weights that are missing, corrupt, truncated or not in the expected format."""


def shard_names(flat: Mapping[str, np.ndarray], max_shard_bytes: int) -> list[list[str]]:
    """Splits names into consecutive groups of at most ``max_shard_bytes`` each (a larger array goes alone)."""
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}.")
    groups: list[list[str]] = [[]]
    size = 0
    for name, value in flat.items():
        nbytes = int(np.asarray(value).nbytes)
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    return groups


def write_weights(
    folder: str, flat: Mapping[str, np.ndarray], *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
) -> list[str]:
    """Writes ``flat`` into ``folder`` as one file or shards plus an index; returns the file names written.

    The arrays must be numpy arrays of dtypes safetensors stores natively (bfloat16 included).
    """
    arrays = {name: np.ascontiguousarray(value) for name, value in flat.items()}
    for name in arrays:
        if not name or name.startswith("/") or "//" in name:
            raise ValueError(f"Bad parameter name {name!r}: expected a `/`-joined path such as 'head/kernel'.")
    metadata = {"format": "flax"}
    groups = shard_names(arrays, max_shard_bytes)
    if len(groups) == 1:
        safetensors.numpy.save_file(arrays, os.path.join(folder, WEIGHTS_FILE), metadata=metadata)
        return [WEIGHTS_FILE]
    files = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    weight_map: dict[str, str] = {}
    for file, names in zip(files, groups):
        safetensors.numpy.save_file({n: arrays[n] for n in names}, os.path.join(folder, file), metadata=metadata)
        weight_map.update(dict.fromkeys(names, file))
    total = sum(int(a.nbytes) for a in arrays.values())
    index = {"metadata": {"total_size": total, "format": "flax"}, "weight_map": weight_map}
    with open(os.path.join(folder, INDEX_FILE), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    return [*files, INDEX_FILE]


def weight_files(folder: str) -> list[str]:
    """The safetensors files of a model folder (checked names), in order; a clear error if there are none."""
    index_path = os.path.join(folder, INDEX_FILE)
    if os.path.isfile(index_path):
        index = _read_json(index_path, "weights index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsError(f"{index_path} has no 'weight_map' object mapping parameter names to files.")
        files = sorted(set(weight_map.values()))
        for file in files:
            if not isinstance(file, str) or not _SHARD_RE.fullmatch(file):
                raise WeightsError(
                    f"{index_path} names the weights file {file!r}; expected names like "
                    "'model-00001-of-00003.safetensors' in the same folder."
                )
        return files
    if os.path.isfile(os.path.join(folder, WEIGHTS_FILE)):
        return [WEIGHTS_FILE]
    present = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    unsafe = [f for f in present if f in _PICKLE_WEIGHTS or f.endswith((".bin", ".pt", ".pth", ".pkl", ".msgpack"))]
    if unsafe:
        raise WeightsError(
            f"{folder} has weights only in {', '.join(unsafe)}, a format that can run code when loaded (pickle) or "
            f"that bv does not read. bv loads only {WEIGHTS_FILE} (safetensors); convert the weights first."
        )
    raise WeightsError(f"{folder} has no {WEIGHTS_FILE} or {INDEX_FILE}; the files there are: {present}.")


def read_weights(
    folder: str, *, names: Iterable[str] | None = None, sha256: Mapping[str, str] | None = None
) -> dict[str, np.ndarray]:
    """All weights of a model folder as a flat name -> numpy array mapping (checked for corruption).

    ``sha256`` (file name -> hex digest, as ``config.json`` records them) also catches damage that
    keeps a file's size and header: flipped bytes inside the arrays.
    """
    files = weight_files(folder)
    wanted = set(names) if names is not None else None
    out: dict[str, np.ndarray] = {}
    for file in files:
        path = os.path.join(folder, file)
        _check_header(path)
        if sha256 and file in sha256:
            _check_sha256(path, sha256[file])
        out.update(read_safetensors(path, wanted))
    return out


def file_sha256(path: str) -> str:
    """The hex sha256 of a file, read in 16 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(16 * 1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha256(path: str, expected: str) -> None:
    actual = file_sha256(path)
    if actual != expected:
        raise WeightsError(
            f"{path} is damaged: its sha256 is {actual[:16]}..., but config.json records {expected[:16]}... for it "
            f"(the digest save_pretrained wrote). {_FIX}"
        )


def read_safetensors(path: str, names: set[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of one safetensors file, with a clear error for a file that is truncated or not safetensors."""
    _check_header(path)
    try:
        out: dict[str, np.ndarray] = {}
        with safetensors.safe_open(path, framework="np") as f:
            for key in f.keys():
                if names is None or key in names:
                    out[key] = f.get_tensor(key)
        return out
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"Cannot read the weights file {path}: {e}. It may be damaged. {_FIX}") from e


def _check_header(path: str) -> None:
    """Validates the safetensors header and that the file holds every byte the header promises."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path} is not a safetensors file: it is only {size} bytes long. {_FIX}")
        header_len = int.from_bytes(head, "little")
        if header_len <= 0 or header_len > min(size - 8, 100 * 1024**2):
            if head[:1] == b"\x80":
                raise WeightsError(
                    f"{path} is not a safetensors file (its header length field is invalid). It looks like a pickle "
                    "file, which bv never loads: convert the weights to safetensors."
                )
            raise WeightsError(f"{path} is not a safetensors file (its header length field is invalid). {_FIX}")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightsError(f"{path} is not a safetensors file: its header is not JSON ({e}). {_FIX}") from e
    if not isinstance(header, dict):
        raise WeightsError(f"{path} is not a safetensors file: its header is not a JSON object. {_FIX}")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise WeightsError(f"{path} has a corrupt header entry for {key!r}. {_FIX}")
        end = max(end, offsets[1])
    if 8 + header_len + end > size:
        raise WeightsError(
            f"{path} is truncated: its header describes {8 + header_len + end} bytes but the file has {size}. {_FIX}"
        )


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"The {what} {path} is not valid JSON: {e}.") from e

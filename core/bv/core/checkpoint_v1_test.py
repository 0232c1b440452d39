"""Format-1 workdirs (safetensors, before Orbax): a clear error, and a converter that loses nothing."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from bv.core import checkpoint, checkpoint_v1
from bv.core.tree import flatten_with_names


def _write_format_1(workdir: str, step: int, state: dict, metadata: dict) -> str:
    """Writes a checkpoint exactly as bv-core 0.1 did: one safetensors file, checkpoint.json and LAST."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    path = os.path.join(ckpt_dir, f"ckpt-{step:09d}")
    os.makedirs(path)
    arrays, leaves = {}, []
    for name, value in flatten_with_names(state):
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            arrays[name] = np.asarray(jax.random.key_data(value))
            impl = str(jax.random.key_impl(value))
            leaves.append({"name": name, "dtype": str(value.dtype), "shape": [], "encoding": "prng_key", "impl": impl})
            continue
        array = np.asarray(value)
        record = {"name": name, "dtype": array.dtype.name, "shape": list(array.shape)}
        if array.dtype == jnp.bfloat16:
            array, record["encoding"] = array.view(np.uint16), "uint_view"
        arrays[name] = array
        leaves.append(record)
    safetensors.numpy.save_file(arrays, os.path.join(path, "state.safetensors"))
    info = {"format": "bv-checkpoint", "version": 1, "step": step, "metadata": {**metadata, "step": step}}
    info.update(leaves=leaves, arrays_bytes=os.path.getsize(os.path.join(path, "state.safetensors")))
    with open(os.path.join(path, "checkpoint.json"), "w") as f:
        json.dump(info, f)
    with open(os.path.join(ckpt_dir, "LAST"), "w") as f:
        f.write(os.path.basename(path) + "\n")
    return path


def _state(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "params": {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(jnp.bfloat16)},
        "opt": {"count": np.int32(seed), "mu": {"w": np.zeros((4, 3), np.float32), "b": np.ones(3, jnp.bfloat16)}},
        "rng": jax.random.key(seed),
    }


def _bits(tree: dict) -> dict:
    out = {}
    for name, value in flatten_with_names(tree):
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            value = jax.random.key_data(value)
        out[name] = (np.asarray(value).dtype.name, np.asarray(value).tobytes())
    return out


def test_format_1_workdirs_get_a_clear_error_then_convert_without_loss(tmp_path):
    workdir = str(tmp_path / "run")
    states = {5: _state(5), 10: _state(10)}
    for step, state in states.items():
        _write_format_1(workdir, step, state, {"data_index": step * 8})

    with pytest.raises(checkpoint.OldCheckpointFormatError, match=r"bv-convert-checkpoints .*run"):
        checkpoint.latest(workdir)
    old_path = os.path.join(workdir, "checkpoints", "ckpt-000000010")
    with pytest.raises(checkpoint.OldCheckpointFormatError, match="format 1"):
        checkpoint.load_params(old_path)

    assert checkpoint_v1.main([workdir]) == 0
    ckpt_dir = os.path.join(workdir, "checkpoints")
    assert sorted(os.listdir(ckpt_dir)) == ["ckpt-000000005", "ckpt-000000010", "format-1"]
    assert sorted(os.listdir(os.path.join(ckpt_dir, "format-1"))) == ["LAST", "ckpt-000000005", "ckpt-000000010"]
    assert checkpoint.latest(workdir) == old_path
    for step, state in states.items():
        path = os.path.join(ckpt_dir, f"ckpt-{step:09d}")
        restored, metadata = checkpoint.restore(path, state)
        assert metadata == {"data_index": step * 8, "step": step}
        assert _bits(restored) == _bits(state)
    assert checkpoint_v1.main([workdir]) == 0  # a second run finds nothing to do and changes nothing
    assert checkpoint.latest(workdir) == old_path


def test_the_converter_explains_a_folder_that_is_not_a_workdir(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        checkpoint_v1.main([str(tmp_path)])
    assert exit_info.value.code == 2  # a user error: one paragraph, no traceback
    assert "has no checkpoints/ folder" in capsys.readouterr().err


def test_a_damaged_format_1_checkpoint_names_itself_and_the_way_out(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    _write_format_1(workdir, 5, _state(5), {"data_index": 40})
    _write_format_1(workdir, 10, _state(10), {"data_index": 80})
    damaged = os.path.join(workdir, "checkpoints", "ckpt-000000010")
    arrays = os.path.join(damaged, "state.safetensors")
    with open(arrays, "r+b") as f:
        f.seek(8)
        f.write(b"\xff\xfe{[")  # inside the JSON header
    before = open(arrays, "rb").read()
    with pytest.raises(SystemExit) as exit_info:
        checkpoint_v1.main([workdir])
    assert exit_info.value.code == 2  # one paragraph, no traceback
    err = capsys.readouterr().err
    assert f"The format-1 checkpoint {damaged} cannot be converted" in err and "left as it is" in err
    assert "Move that folder out of checkpoints/" in err
    assert open(arrays, "rb").read() == before

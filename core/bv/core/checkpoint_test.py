"""Tests for bv.core.checkpoint: exact round trips, atomic saves, pruning and crash safety."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

import numpy as np
import optax
import pytest
import orbax.checkpoint as ocp

from bv.core import checkpoint, checkpoint_leaves
from bv.core.tree import flatten_with_names


def _params() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    bf16_bits = rng.integers(0, 2**16, size=(3, 2), dtype=np.uint16)
    bf16_bits[0, 0] = 0x7FC1  # a NaN with a payload: must survive bit for bit
    return {
        "enc": {"w": jax.device_put(rng.normal(size=(2, 3)).astype(np.float32)), "b": jax.device_put(np.arange(3.0))},
        "head": {"w": jax.device_put(bf16_bits.view(jnp.bfloat16))},
    }


def _randomised(tree: Any, seed: int) -> Any:
    """``tree`` with every leaf replaced by random bits of the same shape and dtype (no zeros to hide behind)."""
    rng = np.random.default_rng(seed)

    def fill(x: Any) -> Any:
        bits = rng.integers(0, 256, size=np.dtype(x.dtype).itemsize * x.size, dtype=np.uint8)
        return jax.device_put(bits.view(x.dtype).reshape(x.shape))

    return jax.tree.map(fill, tree)


def _state() -> dict[str, Any]:
    params = _params()
    labels = {"enc": {"w": "adam", "b": "frozen"}, "head": {"w": "adam"}}
    multi = optax.multi_transform({"adam": optax.adam(1e-3), "frozen": optax.set_to_zero()}, labels)
    chain = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.scale_by_adam(mu_dtype=jnp.bfloat16),
        optax.masked(optax.add_decayed_weights(1e-4), {"enc": {"w": True, "b": False}, "head": {"w": True}}),
        optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
    )
    return {
        "params": params,
        "opt": {
            "adam": _randomised(optax.adam(1e-3).init(params), seed=1),
            "multi": _randomised(multi.init(params), seed=2),
            "chain": chain.init(params),
        },
        "rng_raw": jax.random.PRNGKey(7),
        "rng_typed": jax.random.key(3),
        "rng_split": jax.random.split(jax.random.key(5), 4),
        "step": jax.device_put(np.int32(12)),
        "seen": np.int64(1234),
        "f8": np.arange(4, dtype=np.float32).astype(jnp.float8_e4m3fn),
        "c128": np.array([1 + 2j, -3.5j], np.complex128),
    }


def _bits(x: Any) -> tuple[str, tuple[int, ...], bytes]:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return str(x.dtype), tuple(x.shape), np.asarray(jax.random.key_data(x)).tobytes()
    a = np.asarray(x)
    return a.dtype.name, a.shape, a.tobytes()


def _assert_bitwise_equal(a: Any, b: Any) -> None:
    structure: Any = jax.tree.structure(a)
    assert structure == jax.tree.structure(b)
    names_a = [n for n, _ in flatten_with_names(a)]
    assert names_a == [n for n, _ in flatten_with_names(b)]
    for name, x, y in zip(names_a, jax.tree.leaves(a), jax.tree.leaves(b)):
        assert _bits(x) == _bits(y), name


def _shapes(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _snapshot(root: str) -> dict[str, tuple[int, int, str]]:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            st = os.stat(path)
            out[path] = (st.st_size, st.st_mtime_ns, digest)
    return out


def test_round_trip_is_bitwise_with_the_same_structure(tmp_path):
    state = _state()
    path = checkpoint.save(str(tmp_path), 12, state, metadata={"data": {"epoch": 1, "index": 96}, "lr": 0.5})
    assert path == os.path.join(str(tmp_path), "checkpoints", "ckpt-000000012")
    # One Orbax item per top-level entry of the state, and the description.
    assert set(os.listdir(path)) >= set(state) | {"bv"}
    assert os.path.isfile(os.path.join(path, checkpoint.INFO_FILE))

    for template in (state, _shapes(state)):
        restored, metadata = checkpoint.restore(path, template)
        _assert_bitwise_equal(restored, state)
        assert metadata == {"data": {"epoch": 1, "index": 96}, "lr": 0.5, "step": 12}
    # Typed keys come back as typed keys that still drive jax.random identically.
    assert jnp.array_equal(
        jax.random.key_data(jax.random.split(restored["rng_typed"])),
        jax.random.key_data(jax.random.split(state["rng_typed"])),
    )
    assert isinstance(restored["params"]["enc"]["w"], jax.Array)
    assert restored["opt"]["chain"][1].mu["enc"]["w"].dtype == jnp.bfloat16


def test_a_relative_workdir_saves_and_restores(tmp_path, monkeypatch):
    # Users write --workdir runs/vit_mnist; Orbax itself accepts absolute paths only.
    monkeypatch.chdir(tmp_path)
    state = _state()
    with checkpoint.CheckpointWriter(os.path.join("runs", "x")) as writer:
        writer.save(2, state)
    path = checkpoint.latest(os.path.join("runs", "x"))
    assert path is not None and os.path.samefile(path, tmp_path / "runs" / "x" / "checkpoints" / "ckpt-000000002")
    restored, metadata = checkpoint.restore(os.path.relpath(path), _shapes(state))
    _assert_bitwise_equal(restored, state)
    assert metadata["step"] == 2
    resumed = checkpoint.restore_latest(os.path.join("runs", "x"), state)
    assert resumed is not None and resumed[1]["step"] == 2


def test_numpy_and_python_leaves_keep_their_kind(tmp_path):
    state = {"a": np.arange(3, dtype=np.int16), "n": 5, "x": 0.25, "flag": True, "s": np.float32(2.5)}
    path = checkpoint.save(str(tmp_path), 0, state)
    restored, _ = checkpoint.restore(path, state)
    assert isinstance(restored["a"], np.ndarray) and restored["a"].dtype == np.int16
    assert restored["n"] == 5 and isinstance(restored["n"], int) and not isinstance(restored["n"], bool)
    assert restored["x"] == 0.25 and isinstance(restored["x"], float)
    assert restored["flag"] is True
    assert isinstance(restored["s"], np.float32) and restored["s"] == 2.5


def test_a_checkpoint_is_a_plain_orbax_checkpoint_with_true_dtypes_recorded(tmp_path):
    state = _state()
    path = checkpoint.save(str(tmp_path), 1, state)
    # Any Orbax user can read an item without bv: bfloat16 is stored as bfloat16.
    with ocp.PyTreeCheckpointer() as reader:
        params = reader.restore(os.path.join(path, "params"))
    assert np.asarray(params["head"]["w"]).dtype == jnp.bfloat16
    assert np.asarray(params["head"]["w"]).tobytes() == np.asarray(state["params"]["head"]["w"]).tobytes()
    info = checkpoint.read_info(path)
    assert info["format"] == "bv-checkpoint" and info["version"] == checkpoint.FORMAT_VERSION
    assert {"jax", "orbax-checkpoint"} <= set(info["versions"])
    leaves = {leaf["name"]: leaf for leaf in info["leaves"]}
    assert leaves["params/head/w"]["dtype"] == "bfloat16"
    assert leaves["rng_split"]["dtype"] == "key<fry>" and leaves["rng_split"]["shape"] == [4]


def test_load_params_needs_no_template_and_never_reads_the_optimizer_state(tmp_path):
    state = _state()
    path = checkpoint.save(str(tmp_path), 3, state)
    shutil.rmtree(os.path.join(path, "opt"))  # proves the optimizer state is not read
    params = checkpoint.load_params(path)
    assert set(params) == {"enc", "head"} and set(params["enc"]) == {"w", "b"}
    assert isinstance(params["enc"]["w"], np.ndarray)
    np.testing.assert_array_equal(params["enc"]["w"], np.asarray(state["params"]["enc"]["w"]))
    assert params["head"]["w"].dtype == jnp.bfloat16
    assert params["head"]["w"].tobytes() == np.asarray(state["params"]["head"]["w"]).tobytes()
    assert set(checkpoint.load_params(path, "params/enc")) == {"w", "b"}
    with pytest.raises(KeyError, match="no leaves under 'model'.*'params'"):
        checkpoint.load_params(path, "model")
    with pytest.raises(checkpoint.CheckpointReadError, match="could not be read"):
        checkpoint.load_params(path, None)


def test_latest_follows_saves_and_pruning_keeps_last_and_every(tmp_path):
    workdir = str(tmp_path)
    assert checkpoint.latest(workdir) is None
    state = {"w": np.zeros(2, np.float32)}
    for step in range(1, 11):
        path = checkpoint.save(workdir, step, {"w": np.full(2, step, np.float32)}, keep_last=2, keep_every=4)
        assert checkpoint.latest(workdir) == path
        assert checkpoint.restore(checkpoint.latest(workdir), state)[1]["step"] == step
    steps = [int(os.path.basename(p)[5:]) for p in checkpoint.list_checkpoints(workdir)]
    assert steps == [4, 8, 9, 10]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
        "ckpt-000000004",
        "ckpt-000000008",
        "ckpt-000000009",
        "ckpt-000000010",
    ]
    restored, _ = checkpoint.restore(checkpoint.list_checkpoints(workdir)[0], state)
    np.testing.assert_array_equal(restored["w"], [4, 4])


def test_saving_a_step_again_replaces_it(tmp_path):
    workdir = str(tmp_path)
    checkpoint.save(workdir, 5, {"w": np.zeros(2)})
    path = checkpoint.save(workdir, 5, {"w": np.ones(2)}, metadata={"again": True})
    restored, metadata = checkpoint.restore(path, {"w": np.zeros(2)})
    np.testing.assert_array_equal(restored["w"], [1, 1])
    assert metadata == {"again": True, "step": 5}
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["ckpt-000000005"]


def test_half_written_checkpoints_are_never_returned(tmp_path):
    workdir = str(tmp_path)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    good = checkpoint.save(workdir, 10, {"w": np.arange(1000, dtype=np.float32)})
    # Killed saves of step 20: Orbax's temporary folder and ours, each a complete-looking copy.
    for name in ("ckpt-000000020.orbax-checkpoint-tmp-1234", ".tmp-replaced-ckpt-000000020-dead"):
        shutil.copytree(good, os.path.join(ckpt_dir, name))
    assert checkpoint.latest(workdir) == good

    # Folders with a real name but no (or an unreadable, or another step's) description.
    os.mkdir(os.path.join(ckpt_dir, "ckpt-000000050"))
    shutil.copytree(good, os.path.join(ckpt_dir, "ckpt-000000040"))  # says step 10
    damaged = os.path.join(ckpt_dir, "ckpt-000000030")
    shutil.copytree(good, damaged)
    with open(os.path.join(damaged, checkpoint.INFO_FILE), "r+b") as f:
        f.truncate(20)
    assert checkpoint.latest(workdir) == good
    assert checkpoint.list_checkpoints(workdir) == [good]

    # The next save removes the temporary leftovers and leaves the odd folders alone.
    checkpoint.save(workdir, 60, {"w": np.zeros(3)}, keep_last=5)
    names = sorted(os.listdir(ckpt_dir))
    assert names == ["ckpt-000000010", "ckpt-000000030", "ckpt-000000040", "ckpt-000000050", "ckpt-000000060"]


def test_async_saves_copy_the_arrays_before_training_overwrites_them(tmp_path):
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = {"w": jax.device_put(np.arange(4096, dtype=np.float32), sharding), "n": jnp.int32(7)}
    expected = jax.tree.map(np.asarray, state)
    step_fn = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)
    with checkpoint.CheckpointWriter(str(tmp_path), keep_last=3) as writer:
        for step in (1, 2):
            writer.save(step, state)
            for _ in range(3):
                state = step_fn(state)  # donates and overwrites the buffers the save started from
        path = writer.save(3, state)
    assert checkpoint.latest(str(tmp_path)) == path  # closing the writer waited for the last save
    restored, _ = checkpoint.restore(
        checkpoint.list_checkpoints(str(tmp_path))[0], jax.tree.map(np.zeros_like, expected)
    )
    _assert_bitwise_equal(restored, expected)
    third, _ = checkpoint.restore(checkpoint.latest(str(tmp_path)), state)
    np.testing.assert_array_equal(third["w"], expected["w"] + 6)


def test_mismatched_template_raises_and_touches_nothing(tmp_path):
    state = _state()
    path = checkpoint.save(str(tmp_path), 2, state)
    before = _snapshot(str(tmp_path))

    extra = _shapes(state)
    extra["params"]["new"] = {"kernel": jax.ShapeDtypeStruct((4, 4), jnp.float32)}
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"missing from the checkpoint: params/new/kernel"):
        checkpoint.restore(path, extra)

    missing = _shapes(state)
    del missing["params"]["head"]
    with pytest.raises(checkpoint.CheckpointMismatchError) as err:
        checkpoint.restore(path, missing)
    assert "does not match the model/optimizer" in str(err.value)
    assert "unexpected in the checkpoint: params/head/w (bfloat16[3,2])" in str(err.value)

    wrong_shape = _shapes(state)
    wrong_shape["params"]["enc"]["w"] = jax.ShapeDtypeStruct((3, 3), jnp.float32)
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"shape differs: params/enc/w is \(2, 3\).*\(3, 3\)"):
        checkpoint.restore(path, wrong_shape)

    wrong_dtype = _shapes(state)
    wrong_dtype["params"]["head"]["w"] = jax.ShapeDtypeStruct((3, 2), jnp.float32)
    wrong_dtype["rng_typed"] = jax.ShapeDtypeStruct((2,), jnp.uint32)
    with pytest.raises(checkpoint.CheckpointMismatchError) as err:
        checkpoint.restore(path, wrong_dtype)
    message = str(err.value)
    assert "dtype differs: params/head/w is bfloat16 in the checkpoint vs float32 expected" in message
    assert "rng_typed" in message and "2 leaves differ" in message

    # A new optimizer changes many leaves: only the first few are listed.
    other_opt = _shapes({**state, "opt": optax.lion(1e-3).init(state["params"])})
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"\.\.\. and \d+ more"):
        checkpoint.restore(path, other_opt)

    checkpoint.restore(path, state)
    checkpoint.load_params(path)
    checkpoint.latest(str(tmp_path))
    assert _snapshot(str(tmp_path)) == before


def test_bad_inputs_fail_before_writing(tmp_path):
    workdir = str(tmp_path)
    with pytest.raises(TypeError, match="'tag'.*metadata"):
        checkpoint.save(workdir, 1, {"tag": np.array(["a"])})
    with pytest.raises(TypeError, match="JSON"):
        checkpoint.save(workdir, 1, {"w": np.zeros(1)}, metadata={"obj": object()})
    with pytest.raises(ValueError, match="both named 'a/b'"):
        checkpoint.save(workdir, 1, {"a/b": np.zeros(1), "a": {"b": np.zeros(1)}})
    with pytest.raises(ValueError, match="keep_last"):
        checkpoint.save(workdir, 1, {"w": np.zeros(1)}, keep_last=0)
    with pytest.raises(ValueError, match="step"):
        checkpoint.save(workdir, -1, {"w": np.zeros(1)})
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    with pytest.raises(FileNotFoundError, match="not a bv checkpoint"):
        checkpoint.restore(workdir, {})


def _largest_array_file(path: str) -> str:
    files = [os.path.join(d, n) for d, _, names in os.walk(os.path.join(path, "params")) for n in names]
    return max(files, key=os.path.getsize)


def test_a_truncated_shard_gives_a_clear_error_and_nothing_is_deleted(tmp_path):
    workdir = str(tmp_path)
    template = {"params": {"w": np.zeros((256, 64), np.float32)}, "opt": {"mu": np.zeros(8, np.float32)}}
    mu = np.ones(8, np.float32)
    older = checkpoint.save(workdir, 1, {"params": {"w": np.ones((256, 64), np.float32)}, "opt": {"mu": mu}})
    newer = checkpoint.save(
        workdir, 2, {"params": {"w": np.full((256, 64), 2.0, np.float32)}, "opt": {"mu": mu}}, keep_last=2
    )
    shard = _largest_array_file(newer)
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    before = _snapshot(workdir)
    for read in (lambda: checkpoint.restore(newer, template), lambda: checkpoint.load_params(newer)):
        with pytest.raises(checkpoint.CheckpointReadError) as err:
            read()
        message = str(err.value)
        assert f"Checkpoint {newer} could not be read" in message and "Nothing was changed" in message
        assert older in message  # says which checkpoint to fall back to
    assert _snapshot(workdir) == before
    restored, _ = checkpoint.restore(older, template)
    np.testing.assert_array_equal(restored["params"]["w"], 1.0)


def test_a_newer_format_version_is_refused_and_nothing_is_deleted(tmp_path):
    workdir = str(tmp_path)
    path = checkpoint.save(workdir, 3, {"w": np.zeros(2)})
    info_path = os.path.join(path, checkpoint.INFO_FILE)
    with open(info_path) as f:
        info = json.load(f)
    info["version"] = checkpoint.FORMAT_VERSION + 1
    with open(info_path, "w") as f:
        json.dump(info, f)
    before = _snapshot(workdir)
    with pytest.raises(ValueError, match=r"format version 3; this bv-core reads versions up to 2\. Upgrade bv-core"):
        checkpoint.restore(path, {"w": np.zeros(2)})
    with pytest.raises(ValueError, match="Upgrade bv-core"):
        checkpoint.load_params(path, "w")
    assert checkpoint.latest(workdir) is None  # never resumed from
    checkpoint.save(workdir, 4, {"w": np.ones(2)})  # a later save keeps it
    assert os.path.isdir(path) and {k: v for k, v in _snapshot(workdir).items() if k in before} == before


def test_no_pickle_is_used(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle was used")

    for name in ("dump", "dumps", "load", "loads", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    state = _state()
    path = checkpoint.save(str(tmp_path), 4, state, metadata={"a": [1, 2]})
    restored, _ = checkpoint.restore(checkpoint.latest(str(tmp_path)), _shapes(state))
    _assert_bitwise_equal(restored, state)
    checkpoint.load_params(path)
    for source in (checkpoint.__file__, checkpoint_leaves.__file__):
        _assert_no_pickle_or_numpy_io(source)


def _assert_no_pickle_or_numpy_io(source: str) -> None:
    with open(source) as f:
        module = ast.parse(f.read())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(module) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(module) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
    numpy_io = [
        node.attr
        for node in ast.walk(module)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("np", "numpy")
        if node.attr in ("load", "save", "savez", "savez_compressed")
    ]
    assert not numpy_io


_CRASH_SCRIPT = """
import sys
import numpy as np
from bv.core import checkpoint

workdir = sys.argv[1]
start = step = int(sys.stdin.readline())  # imports are done; wait for the step to resume from
with checkpoint.CheckpointWriter(workdir, keep_last=2) as writer:  # asynchronous saves
    while True:
        state = {
            "params": {"w": np.full((1024, 1024), step, np.float32), "b": np.full((4096,), step, np.int32)},
            "opt": {"mu": np.full((1024, 1024), step, np.float32)},
        }
        writer.save(step, state, metadata={"step_again": step})
        if step > start:
            print(step - 1, flush=True)  # saving a step first waits until the one before is committed
        step += 1
"""


def test_sigkill_at_random_moments_always_leaves_a_restorable_checkpoint(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(_CRASH_SCRIPT)
    workdir = str(tmp_path / "work")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "JAX_PLATFORMS": "cpu"}
    template = {
        "params": {"w": np.zeros((1024, 1024), np.float32), "b": np.zeros((4096,), np.int32)},
        "opt": {"mu": np.zeros((1024, 1024), np.float32)},
    }
    rand = random.Random(1234)
    # Start every run at once so that their slow imports overlap; each waits for its resume step.
    runs = [
        subprocess.Popen(
            [sys.executable, str(script), workdir],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(4)
    ]
    resume_step, last_step = 0, -1
    try:
        for proc in runs:
            assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
            proc.stdin.write(f"{resume_step}\n")
            proc.stdin.flush()
            first = proc.stdout.readline()  # one save is done: now kill it at a random moment
            if not first:
                proc.wait()
                pytest.fail(f"the saving subprocess failed:\n{proc.stderr.read()}")
            time.sleep(rand.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait()

            path = checkpoint.latest(workdir)
            assert path is not None and not os.path.basename(path).startswith(".tmp")
            restored, metadata = checkpoint.restore(path, template)
            step = metadata["step"]
            assert metadata["step_again"] == step >= max(last_step, resume_step)
            assert np.all(restored["params"]["w"] == step) and np.all(restored["opt"]["mu"] == step)
            assert np.all(restored["params"]["b"] == step)
            last_step, resume_step = step, step + 1
    finally:
        for proc in runs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    checkpoint.save(workdir, resume_step, template, keep_last=2)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    assert not [n for n in os.listdir(ckpt_dir) if n.startswith(".tmp-") or "orbax-checkpoint-tmp" in n]
    assert len(checkpoint.list_checkpoints(workdir)) == 2


def _flip_bytes(path: str, count: int = 4096) -> None:
    """Inverts ``count`` bytes in the middle of ``path``: same size, other content (a silent disk error)."""
    size = os.path.getsize(path)
    start = max(0, size // 2 - count // 2)
    with open(path, "r+b") as f:
        f.seek(start)
        data = f.read(min(count, size - start))
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in data))
    assert os.path.getsize(path) == size


_TEMPLATE = {"params": {"w": np.zeros((256, 64), np.float32)}, "opt": {"mu": np.zeros(8, np.float32)}}


def _save_two(workdir: str) -> tuple[str, str]:
    mu = np.ones(8, np.float32)
    older = checkpoint.save(workdir, 1, {"params": {"w": np.ones((256, 64), np.float32)}, "opt": {"mu": mu}})
    newer = checkpoint.save(
        workdir, 2, {"params": {"w": np.full((256, 64), 2.0, np.float32)}, "opt": {"mu": mu}}, keep_last=2
    )
    return older, newer


def test_flipped_bytes_of_the_same_size_are_detected_not_loaded(tmp_path):
    _, newer = _save_two(str(tmp_path))
    assert os.path.isfile(os.path.join(newer, "checksums.json"))
    _flip_bytes(_largest_array_file(newer))
    for read in (lambda: checkpoint.restore(newer, _TEMPLATE), lambda: checkpoint.load_params(newer)):
        with pytest.raises(checkpoint.CheckpointReadError, match="has changed since it was written"):
            read()
    # load_params neither reads nor verifies the optimizer state: a damaged opt/ does not block an export.
    _, other = _save_two(str(tmp_path / "other"))
    opt_files = [os.path.join(d, n) for d, _, names in os.walk(os.path.join(other, "opt")) for n in names]
    _flip_bytes(max(opt_files, key=os.path.getsize))
    np.testing.assert_array_equal(checkpoint.load_params(other)["w"], 2.0)
    with pytest.raises(checkpoint.CheckpointReadError, match="opt/"):
        checkpoint.restore(other, _TEMPLATE)


def test_resume_falls_back_past_a_damaged_latest_checkpoint_and_keeps_it(tmp_path, caplog):
    workdir = str(tmp_path)
    older, newer = _save_two(workdir)
    _flip_bytes(_largest_array_file(newer))
    with caplog.at_level("WARNING"):
        restored, metadata = checkpoint.restore_latest(workdir, _TEMPLATE)
    assert metadata["step"] == 1
    np.testing.assert_array_equal(restored["params"]["w"], 1.0)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert f"Checkpoint {newer} is damaged" in warning and older in warning and "has changed" in warning
    kept = os.path.join(workdir, "checkpoints", "damaged-ckpt-000000002")
    assert os.path.isdir(kept) and checkpoint.latest(workdir) == older
    # The run then saves step 2 again next to the kept damaged copy, which is never picked nor pruned.
    checkpoint.save(workdir, 2, {"params": {"w": np.full((256, 64), 3.0, np.float32)}, "opt": {"mu": np.ones(8)}})
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["ckpt-000000002", "damaged-ckpt-000000002"]


def test_resume_refuses_to_start_over_when_every_checkpoint_is_damaged(tmp_path):
    workdir = str(tmp_path)
    path = checkpoint.save(workdir, 7, {"params": {"w": np.ones((256, 64), np.float32)}, "opt": {"mu": np.ones(8)}})
    shard = _largest_array_file(path)
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 100)
    before = _snapshot(workdir)
    template = {"params": {"w": np.zeros((256, 64), np.float32)}, "opt": {"mu": np.zeros(8)}}
    with pytest.raises(checkpoint.CheckpointReadError) as err:
        checkpoint.restore_latest(workdir, template)
    message = str(err.value)
    assert f"No checkpoint of {workdir} can be read" in message and "nothing was changed" in message
    assert "truncated" in message and "new --workdir" in message
    assert _snapshot(workdir) == before
    assert checkpoint.restore_latest(str(tmp_path / "empty"), template) is None


_FULL_DISK_SCRIPT = """
import sys, numpy as np
from bv.core import checkpoint
workdir = sys.argv[1]
w = lambda v: {"params": {"w": np.full((300, 1000), v, np.float32)}}  # 1.2 MB per checkpoint
with checkpoint.CheckpointWriter(workdir) as writer:
    writer.save(1, w(1.0))
    writer.wait()
    try:
        writer.save(2, w(2.0))  # the disk holds one checkpoint, not two
        writer.wait()
    except checkpoint.CheckpointWriteError as e:
        print("ERROR:", e)
restored, meta = checkpoint.restore(checkpoint.latest(workdir), w(0.0))
print("RESTORED", meta["step"], float(restored["params"]["w"].mean()))
"""


def _run_on_a_full_disk(tmp_path) -> tuple[str, bool]:
    """Runs the script on a 2 MB tmpfs where the machine allows mounting one, else with an injected ENOSPC."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("BV_FAIL_AT", None)
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "full_disk.py"
    script.write_text(_FULL_DISK_SCRIPT)
    command = f"mount -t tmpfs -o size=2m tmpfs {mount} && exec {sys.executable} {script} {mount}/run"
    if shutil.which("unshare") and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0:
        result = subprocess.run(["unshare", "-rm", "sh", "-c", command], env=env, capture_output=True, text=True)
        return result.stdout + result.stderr, True
    env["BV_FAIL_AT"] = "checkpoint.write@2"
    result = subprocess.run([sys.executable, str(script), str(mount / "run")], env=env, capture_output=True, text=True)
    return result.stdout + result.stderr, False


def test_a_full_disk_stops_the_save_with_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path):
    output, real_tmpfs = _run_on_a_full_disk(tmp_path)
    assert "ERROR: Checkpoint 2 could not be written" in output, output[-3000:]
    assert "the disk is full (no space left on device)" in output
    assert "ckpt-000000001) is intact: run again to resume from it" in output
    assert "RESTORED 1 1.0" in output  # the previous checkpoint is still the latest, and reads back
    print("on a real 2 MB tmpfs" if real_tmpfs else "with an injected ENOSPC")

"""PretrainedModel with a small real Flax model: round trips, overrides, sharding, bad folders, offline cache."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import flax.linen as nn
import huggingface_hub
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bv.core import registry
from bv.core.hub import (
    ConfigFormatError,
    ParamsMismatchError,
    PretrainedModel,
    SaveError,
    SourceError,
    WeightsError,
    load_model,
)
from bv.core.hub.weights import INDEX_FILE


class TinyConvNet(nn.Module):
    """Conv stem, a hidden layer and an optional head; enough structure for nested names."""

    num_classes: int | None = None
    width: int = 8

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
        x = nn.Conv(self.width, (3, 3), name="stem")(x)
        x = jnp.mean(nn.relu(x), axis=(1, 2))
        x = nn.Dense(self.width, name="hidden")(x)
        out = {"pre_logits": x}
        if self.num_classes:
            x = nn.Dense(self.num_classes, name="head")(x)
        return x, out


class TinyNet(PretrainedModel):
    model_name = "hub_test_net"
    package = "bv-core"
    version = "0.0.0"


registry.register_model("hub_test_net", TinyConvNet, hub_class=TinyNet, replace=True)


IMAGES = np.random.RandomState(0).uniform(-1, 1, (2, 12, 12, 3)).astype(np.float32)


def _model(**kw: Any) -> TinyNet:
    return TinyNet.create(num_classes=kw.pop("num_classes", 4), resolution=12, pp="decode|resize(12)", **kw)


def _assert_same_params(a: Any, b: Any) -> None:
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (_, x), (_, y) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_bitwise_and_gives_equal_logits(tmp_path: Path) -> None:
    model = _model(seed=3)
    model.save_pretrained(tmp_path / "m")
    assert sorted(os.listdir(tmp_path / "m")) == ["README.md", "config.json", "model.safetensors"]
    loaded = TinyNet.from_pretrained(tmp_path / "m")
    _assert_same_params(model.params, loaded.params)
    np.testing.assert_array_equal(np.asarray(model(IMAGES)), np.asarray(loaded(IMAGES)))
    assert loaded.config == model.config and loaded.pp == "decode|resize(12)"
    logits, out = loaded(IMAGES, return_intermediates=True)
    assert logits.shape == (2, 4) and out["pre_logits"].shape == (2, 8)
    assert set(loaded.intermediates(IMAGES)) == {"pre_logits"}


def test_folder_format(tmp_path: Path) -> None:
    _model(labels=["a", "b", "c", "d"]).save_pretrained(tmp_path, model_card_kwargs={"license": "apache-2.0"})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["format"] == "bv" and config["model_name"] == "hub_test_net" and config["num_classes"] == 4
    assert config["labels"] == ["a", "b", "c", "d"] and config["resolution"] == 12 and config["package"] == "bv-core"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), framework="np") as f:
        assert f.metadata() == {"format": "flax"}
        assert sorted(f.keys()) == [
            "head/bias",
            "head/kernel",
            "hidden/bias",
            "hidden/kernel",
            "stem/bias",
            "stem/kernel",
        ]
    card = huggingface_hub.ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "bv" and card.data.license == "apache-2.0"
    assert card.data.pipeline_tag == "image-classification" and "flax" in card.data.tags


def test_model_card_lists_metrics(tmp_path: Path) -> None:
    metrics = [{"name": "accuracy", "value": 0.973, "dataset": "mnist5k", "split": "test"}]
    _model().save_pretrained(tmp_path, model_card_kwargs={"metrics": metrics, "datasets": ["mnist5k"]})
    card = huggingface_hub.ModelCard.load(tmp_path / "README.md")
    assert card.data.datasets == ["mnist5k"]
    result = card.data.eval_results[0]
    assert (result.metric_type, result.metric_value, result.dataset_split) == ("accuracy", 0.973, "test")
    assert "| mnist5k | test | accuracy | 0.9730 |" in card.text


def test_sharded_save_loads_back_and_replaces_old_shards(tmp_path: Path) -> None:
    model = _model(width=16)
    model.save_pretrained(tmp_path, max_shard_size=600)
    files = sorted(os.listdir(tmp_path))
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) > 1 and INDEX_FILE in files and "model.safetensors" not in files
    _assert_same_params(model.params, TinyNet.from_pretrained(tmp_path).params)
    model.save_pretrained(tmp_path)  # unsharded now: the old shards and index must go
    assert sorted(os.listdir(tmp_path)) == ["README.md", "config.json", "model.safetensors"]


def test_overrides_new_head_and_model_kwargs(tmp_path: Path) -> None:
    model = _model(seed=1)
    model.save_pretrained(tmp_path)
    new = TinyNet.from_pretrained(tmp_path, num_classes=7)
    assert new.params["head"]["kernel"].shape == (8, 7) and new.labels is None
    np.testing.assert_array_equal(
        np.asarray(new.params["hidden"]["kernel"]), np.asarray(model.params["hidden"]["kernel"])
    )
    with pytest.raises(ParamsMismatchError, match="shape of hidden/kernel"):
        TinyNet.from_pretrained(tmp_path, width=16)


def test_load_model_picks_the_class_from_the_config(tmp_path: Path) -> None:
    _model().save_pretrained(tmp_path)
    assert type(load_model(str(tmp_path))) is TinyNet


def test_bad_folders_fail_clearly_and_touch_nothing(tmp_path: Path) -> None:
    _model().save_pretrained(tmp_path / "ok")

    def broken(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(tmp_path / "ok", folder)
        return folder

    weights = broken("truncated") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="truncated"):
        TinyNet.from_pretrained(tmp_path / "truncated")

    weights = broken("corrupt") / "model.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\0" * 64)
    with pytest.raises(WeightsError, match="not a safetensors file"):
        TinyNet.from_pretrained(tmp_path / "corrupt")

    folder = broken("pickle")
    (folder / "model.safetensors").write_bytes(pickle.dumps({"head/kernel": np.zeros(3)}))
    with pytest.raises(WeightsError, match="pickle"):
        TinyNet.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(WeightsError, match="pickle"):
        TinyNet.from_pretrained(folder)

    config = broken("unknown_model") / "config.json"
    config.write_text(config.read_text().replace('"hub_test_net"', '"no_such_net"'))
    with pytest.raises(ConfigFormatError, match="'no_such_net' model"):
        TinyNet.from_pretrained(tmp_path / "unknown_model")
    with pytest.raises(registry.UnknownNameError, match="Unknown model .no_such_net.. Known model names"):
        load_model(str(tmp_path / "unknown_model"))

    config = broken("shapes") / "config.json"
    config.write_text(config.read_text().replace('"num_classes": 4', '"num_classes": 5'))
    with pytest.raises(ParamsMismatchError, match="shape of head/kernel"):
        TinyNet.from_pretrained(tmp_path / "shapes")

    config = broken("not_json") / "config.json"
    config.write_text("{oops")
    with pytest.raises(ConfigFormatError, match="not valid JSON"):
        TinyNet.from_pretrained(tmp_path / "not_json")

    index = broken("bad_index") / INDEX_FILE
    index.write_text(json.dumps({"weight_map": {"head/kernel": "../../etc/passwd"}}))
    with pytest.raises(WeightsError, match="expected names like"):
        TinyNet.from_pretrained(tmp_path / "bad_index")

    # Loading never writes: every broken folder is as the test left it.
    assert sorted(os.listdir(tmp_path / "truncated")) == ["README.md", "config.json", "model.safetensors"]


def test_a_failed_save_keeps_the_old_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _model(seed=1)
    first.save_pretrained(tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr("bv.core.hub.model.write_config", fail)
        with pytest.raises(OSError, match="disk full"):
            _model(seed=2).save_pretrained(tmp_path)
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before

    monkeypatch.setenv("BV_FAIL_AT", "hub.save@0")  # the OSError(ENOSPC) a full disk raises
    with pytest.raises(SaveError) as error:
        _model(seed=2).save_pretrained(tmp_path)
    assert f"Could not write the model to {tmp_path}: the disk is full" in str(error.value)
    assert "The folder is as it was before" in str(error.value)
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before
    with pytest.raises(SaveError):
        _model(seed=2).save_pretrained(tmp_path / "new")
    assert not (tmp_path / "new").exists()  # a folder the failed save created is not left behind


def test_bad_sources_and_inputs() -> None:
    with pytest.raises(SourceError, match="neither an existing folder"):
        TinyNet.from_pretrained("./no/such/folder")
    with pytest.raises(SourceError, match="does not exist"):
        TinyNet.from_pretrained("missing.npz")
    model = _model()
    with pytest.raises(ValueError, match=r"\[batch, height, width, 3\]"):
        model(np.zeros((12, 12, 3), np.float32))
    with pytest.raises(ValueError, match="float images"):
        model(np.zeros((1, 12, 12, 3), np.uint8))


def _fake_cache(root: Path, repo_id: str, folder: Path, sha: str) -> None:
    """The layout huggingface_hub's cache uses: models--org--name/{refs/main, snapshots/<sha>/...}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)


def test_offline_loads_a_cached_repo_and_fails_fast_otherwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(seed=5)
    model.save_pretrained(tmp_path / "folder")
    sha = "0123456789abcdef0123456789abcdef01234567"
    _fake_cache(tmp_path / "cache", "org/tiny", tmp_path / "folder", sha)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    # Nothing listens here: a request would fail, but offline mode must not even try.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")

    loaded = TinyNet.from_pretrained("org/tiny", cache_dir=tmp_path / "cache")
    _assert_same_params(model.params, loaded.params)
    pinned = TinyNet.from_pretrained("org/tiny", cache_dir=tmp_path / "cache", revision=sha)
    _assert_same_params(model.params, pinned.params)

    with pytest.raises(SourceError, match=r"org/other is not in the local Hub cache.*HF_HUB_OFFLINE=1"):
        TinyNet.from_pretrained("org/other", cache_dir=tmp_path / "cache")
    with pytest.raises(SourceError, match="not in the local Hub cache"):
        TinyNet.from_pretrained("org/tiny", cache_dir=tmp_path / "cache", revision="f" * 40)


def test_flipped_bytes_in_the_weights_are_caught_by_their_checksum(tmp_path: Path) -> None:
    _model(seed=4).save_pretrained(tmp_path / "ok")
    recorded = json.loads((tmp_path / "ok" / "config.json").read_text())["weights_sha256"]
    assert set(recorded) == {"model.safetensors"}
    shutil.copytree(tmp_path / "ok", tmp_path / "flipped")
    weights = tmp_path / "flipped" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    for i in range(len(data) - 64, len(data)):  # inside the last array: same size, same header
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(
        WeightsError, match=r"flipped/model.safetensors is damaged: its sha256 is .* config.json records"
    ):
        TinyNet.from_pretrained(tmp_path / "flipped")
    with pytest.raises(WeightsError, match=r"force_download=True"):
        load_model(str(tmp_path / "flipped"))
    TinyNet.from_pretrained(tmp_path / "ok")  # the undamaged copy still loads


def test_a_corrupt_header_names_the_file_and_what_to_do(tmp_path: Path) -> None:
    _model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:12] = b"\xff\xfe{["  # the JSON header itself
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as error:
        TinyNet.from_pretrained(tmp_path)
    message = str(error.value)
    assert str(weights) in message and "is not a safetensors file" in message
    assert "Download it again" in message and "force_download=True" in message and "bv-export" in message


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(num_classes=-3),
            "TinyNet.from_pretrained: num_classes must be a whole number >= 0 (or None for no head), got -3.",
        ),
        (
            dict(resolution=0),
            "TinyNet.from_pretrained: resolution must be a positive whole number of pixels, such as 224; got 0.",
        ),
        (dict(resolution=12.5), "resolution must be a positive whole number"),
        (dict(channels=-1), "TinyNet.from_pretrained: channels must be a positive whole number, got -1."),
        (dict(labels="cat,dog"), "labels must be a list of strings"),
    ],
)
def test_bad_from_pretrained_arguments(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    _model().save_pretrained(tmp_path)
    with pytest.raises(ConfigFormatError, match=re.escape(message)):
        TinyNet.from_pretrained(tmp_path, **overrides)
    with pytest.raises(ConfigFormatError, match="TinyNet.create: "):
        TinyNet.create(**{"num_classes": 4, "resolution": 12, **overrides})

"""``bv data``: .npz and folder imports, the listing, and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bv.core.data import commands, input_pipeline


def _arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, n)


def test_an_npz_with_splits_becomes_a_data_set_that_get_builder_finds(tmp_path: Path) -> None:
    (train_x, train_y), (test_x, test_y) = _arrays(12), _arrays(5, seed=1)
    np.savez(
        tmp_path / "a.npz",
        train_image=train_x,
        train_label=train_y,
        test_image=test_x,
        test_label=test_y,
        label_names=np.array(["a", "b", "c"]),
    )
    commands.import_source(str(tmp_path / "a.npz"), "my_arrays", str(tmp_path / "tfds"))
    builder = input_pipeline.get_builder("my_arrays", str(tmp_path / "tfds"))
    assert {s: int(i.num_examples) for s, i in builder.info.splits.items()} == {"train": 12, "test": 5}
    assert builder.info.features["label"].names == ["a", "b", "c"]
    first = next(iter(builder.as_dataset(split="train").as_numpy_iterator()))
    np.testing.assert_array_equal(first["image"], train_x[0])
    listed = commands.list_prepared(str(tmp_path / "tfds"))
    assert [(d["name"], d["version"], d["splits"]) for d in listed] == [
        ("my_arrays", "1.0.0", {"train": 12, "test": 5})
    ]


def test_import_errors_say_what_was_expected(tmp_path: Path) -> None:
    images, labels = _arrays(4)
    np.savez(tmp_path / "odd.npz", pixels=images, label=labels)
    with pytest.raises(commands.DataError, match="holds an array 'pixels'; expected 'image' and 'label'"):
        commands.import_source(str(tmp_path / "odd.npz"), "odd", str(tmp_path))
    np.savez(tmp_path / "float.npz", image=images.astype(np.float32), label=labels)
    with pytest.raises(commands.DataError, match="expected uint8"):
        commands.import_source(str(tmp_path / "float.npz"), "floats", str(tmp_path))
    np.savez(tmp_path / "short.npz", image=images, label=labels[:2])
    with pytest.raises(commands.DataError, match="4 images but 2 labels"):
        commands.import_source(str(tmp_path / "short.npz"), "short", str(tmp_path))
    with pytest.raises(commands.DataError, match="does not exist"):
        commands.import_source(str(tmp_path / "missing"), "missing", str(tmp_path))
    np.savez(tmp_path / "ok.npz", image=images, label=labels)
    commands.import_source(str(tmp_path / "ok.npz"), "ok", str(tmp_path))
    with pytest.raises(commands.DataError, match="already prepared .* --overwrite"):
        commands.import_source(str(tmp_path / "ok.npz"), "ok", str(tmp_path))
    commands.import_source(str(tmp_path / "ok.npz"), "ok", str(tmp_path), overwrite=True)


def test_list_of_an_empty_or_missing_data_dir(tmp_path: Path) -> None:
    assert commands.list_prepared(str(tmp_path / "none")) == []


def test_download_without_internet_fails_at_once_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    probed = []

    def unreachable(address: tuple[str, int], timeout: float) -> None:
        probed.append((address, timeout))
        raise OSError("Network is unreachable")

    monkeypatch.setattr(commands.socket, "create_connection", unreachable)
    with pytest.raises(commands.DataError) as e:
        commands.download(["cifar10"])
    assert probed == [(commands.PROBE_HOST, commands.PROBE_TIMEOUT_S)]
    assert "needs internet access" in str(e.value) and "bv data import" in str(e.value)
    # Behind a proxy a direct connection proves nothing: no probe.
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    commands.check_internet()
    assert len(probed) == 1

"""A training run becomes a Hub folder (bv-export) that loads with from_pretrained and seeds another run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import huggingface_hub
import jax
import numpy as np
import pytest

from bv.core import checkpoint, evaluate, export, train
from bv.core.config import load_config
from bv.core.tasks import get_model
from bv.vit import ViT


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    root = tmp_path_factory.mktemp("export")
    config = load_config("bv.vit.configs.mnist:runlocal")
    config.input.data.data_dir = str(root / "tfds")
    config.evals.test.data.data_dir = str(root / "tfds")
    train.train(config, str(root / "run"))
    return root, config


def _latest(workdir: Path) -> str:
    path = checkpoint.latest(str(workdir))
    assert path is not None, f"{workdir} has no checkpoint"
    return path


def _images(n: int = 3) -> np.ndarray:
    return np.random.RandomState(0).uniform(-1, 1, (n, 28, 28, 1)).astype(np.float32)


def test_export_writes_a_folder_that_loads_with_equal_logits(
    run: tuple[Path, Any], capsys: pytest.CaptureFixture
) -> None:
    root, config = run
    export.main([str(root / "run"), str(root / "hub")])
    assert "Wrote" in capsys.readouterr().out

    saved = json.loads((root / "hub" / "config.json").read_text())
    assert saved["model_name"] == "vit" and saved["num_classes"] == 10 and saved["package"] == "bv-vit"
    assert saved["pp"] == "decode(channels=1)|resize(32)|central_crop(28)|value_range(-1, 1)"
    assert (saved["resolution"], saved["channels"]) == (28, 1)
    assert saved["labels"] == [str(i) for i in range(10)]
    assert saved["extra"]["trained_steps"] == 6

    card = huggingface_hub.ModelCard.load(root / "hub" / "README.md")
    final = json.loads((root / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert card.data.library_name == "bv" and card.data.datasets == ["mnist5k"]
    result = card.data.eval_results[0]
    assert result.metric_type == "accuracy" and result.metric_value == pytest.approx(final["test/prec@1"])

    model = ViT.from_pretrained(str(root / "hub"))
    params = checkpoint.load_params(_latest(root / "run"))
    expected, _ = jax.jit(get_model(config).apply)({"params": params}, _images())  # jitted, like the model
    np.testing.assert_array_equal(np.asarray(model(_images())), np.asarray(expected))


def test_exported_folder_and_npz_seed_a_new_run(run: tuple[Path, Any]) -> None:
    root, config = run
    export.export(str(root / "run"), str(root / "hub2"))
    export.export(str(root / "run"), str(root / "ckpt.npz"), fmt="big_vision")
    trained = checkpoint.load_params(_latest(root / "run"))
    for source in (str(root / "hub2"), str(root / "ckpt.npz")):
        new = load_config("bv.vit.configs.mnist:runlocal")
        new.input.data.data_dir = config.input.data.data_dir
        new.evals.test.data.data_dir = config.input.data.data_dir
        new.model_init = source
        new.total_steps, new.lr, new.wd = 1, 0.0, 0.0  # one step that changes nothing
        train.train(new, str(root / f"init_{Path(source).name}"))
        loaded = checkpoint.load_params(_latest(root / f"init_{Path(source).name}"))
        for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(loaded)):
            np.testing.assert_array_equal(a, b)


def test_export_ema_writes_the_average_and_its_metrics(run: tuple[Path, Any], capsys: pytest.CaptureFixture) -> None:
    root, _ = run
    export.main([str(root / "run"), str(root / "hub_ema"), "--ema"])
    model = ViT.from_pretrained(str(root / "hub_ema"))
    average = checkpoint.load_params(_latest(root / "run"), subtree="ema")
    for a, b in zip(jax.tree.leaves(average), jax.tree.leaves(model.params)):
        np.testing.assert_array_equal(a, b)
    card = huggingface_hub.ModelCard.load(root / "hub_ema" / "README.md")
    final = json.loads((root / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert card.data.eval_results[0].metric_value == pytest.approx(final["ema/test/prec@1"])


def _last_eval(workdir: Path) -> dict[str, float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "test/prec@1" in r][-1]


def test_bv_eval_on_the_workdir_equals_the_trainers_last_eval(run: tuple[Path, Any]) -> None:
    root, config = run
    logged = _last_eval(root / "run")
    assert evaluate.evaluate(config, str(root / "run")) == {
        "test/prec@1": logged["test/prec@1"],
        "test/loss": logged["test/loss"],
    }
    assert evaluate.evaluate(config, str(root / "run"), ema=True)["test/prec@1"] == logged["ema/test/prec@1"]


def test_bv_eval_on_the_exported_folder_prints_the_same_metric(run: tuple[Path, Any], tmp_path: Path) -> None:
    root, _ = run
    export.export(str(root / "run"), str(root / "hub_for_eval"))
    env = {**os.environ, "TFDS_DATA_DIR": str(root / "tfds"), "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-m", "bv.core.evaluate", "--config", "bv.vit.configs.mnist:runlocal"]
        + ["--model", str(root / "hub_for_eval"), "--out", str(tmp_path / "evals")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logged = _last_eval(root / "run")
    assert f"test/prec@1: {logged['test/prec@1']!r}" in result.stdout
    written = json.loads((tmp_path / "evals" / "eval_metrics.json").read_text())
    assert written["metrics"]["test/prec@1"] == logged["test/prec@1"]


def test_bv_eval_errors_are_clear(run: tuple[Path, Any], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, config = run
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--config", "bv.vit.configs.mnist:runlocal"])
    assert exit_info.value.code == 2 and "--model SOURCE is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--config", "bv.vit.configs.mnist:runlocal", "--model", str(tmp_path), "--workdir", "x"])
    assert exit_info.value.code == 2 and "takes no --workdir" in capsys.readouterr().err
    with pytest.raises(evaluate.EvalSourceError, match="--ema needs a bv workdir"):
        evaluate.evaluate(config, str(tmp_path), ema=True)


def test_export_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(tmp_path), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "has no config.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_ema_of_a_run_without_one_is_refused(run: tuple[Path, Any], tmp_path: Path) -> None:
    root, config = run
    plain = load_config("bv.vit.configs.mnist:runlocal")
    plain.input.data.data_dir = config.input.data.data_dir
    plain.evals.test.data.data_dir = config.input.data.data_dir
    plain.ema, plain.total_steps, plain.evals = None, 1, {}
    train.train(plain, str(tmp_path / "plain"))
    with pytest.raises(export.ExportError, match="holds no EMA of the params: the run did not set config.ema"):
        export.export(str(tmp_path / "plain"), str(tmp_path / "out"), ema=True)
    assert not (tmp_path / "out").exists()


def test_export_push_uploads_the_folder(run: tuple[Path, Any], tmp_path: Path) -> None:
    import local_hub
    import local_hub_push

    root, _ = run
    repos = tmp_path / "repos"
    with local_hub_push.serve_push_endpoint(repos, token="tok") as url, local_hub.use_endpoint(url):
        os.environ["HF_TOKEN"] = "tok"
        try:
            export.main([str(root / "run"), str(tmp_path / "out"), "--push", "org/vit-mnist"])
        finally:
            del os.environ["HF_TOKEN"]
    history = local_hub.repo_history(repos, "org/vit-mnist")
    assert history, "nothing was pushed"
    with local_hub.serve_olah(repos) as url, local_hub.use_endpoint(url):
        pulled = ViT.from_pretrained("org/vit-mnist", cache_dir=tmp_path / "cache")
    for a, b in zip(jax.tree.leaves(pulled.params), jax.tree.leaves(ViT.from_pretrained(str(tmp_path / "out")).params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _export_fails(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        export.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("bv-export: error: ") and err.count("\n") == 1, err
    return err


def test_export_into_the_workdir_is_refused_and_changes_nothing(
    run: tuple[Path, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, _ = run
    workdir = root / "run"
    before = _snapshot(workdir)
    err = _export_fails([str(workdir), str(workdir)], capsys)
    assert f"OUT {str(workdir)!r} is the workdir" in err and "would overwrite the run's own files" in err
    err = _export_fails([str(workdir), str(workdir / "export")], capsys)
    assert "is inside the workdir" in err
    err = _export_fails([str(workdir), str(workdir / "ckpt.npz"), "--format", "big_vision"], capsys)
    assert "is inside the workdir" in err
    assert _snapshot(workdir) == before  # config.json intact: the workdir still exports
    export.main([str(workdir), str(tmp_path / "hub")])
    assert json.loads((tmp_path / "hub" / "config.json").read_text())["format"] == "bv"


def test_export_out_that_is_a_file_or_another_folder_is_refused(
    run: tuple[Path, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, _ = run
    (tmp_path / "notes.txt").write_text("keep me")
    err = _export_fails([str(root / "run"), str(tmp_path / "notes.txt")], capsys)
    assert "is a file; --format bv writes a folder" in err
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "config.json").write_text('{"mine": 1}')
    (tmp_path / "project" / "train.py").write_text("print('hello')")
    err = _export_fails([str(root / "run"), str(tmp_path / "project")], capsys)
    assert "holds other files (config.json, train.py), not an earlier export" in err
    err = _export_fails([str(root / "run"), str(tmp_path / "project"), "--format", "big_vision"], capsys)
    assert "is a folder; --format big_vision writes one .npz file" in err
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "project" / "config.json").read_text() == '{"mine": 1}'


def test_export_to_a_full_disk_stops_clearly_and_keeps_the_earlier_export(
    run: tuple[Path, Any], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = run
    export.main([str(root / "run"), str(tmp_path / "hub")])
    before, run_before = _snapshot(tmp_path / "hub"), _snapshot(root / "run")
    monkeypatch.setenv("BV_FAIL_AT", "hub.save@0")  # the write fails as on a full disk (OSError ENOSPC)
    err = _export_fails([str(root / "run"), str(tmp_path / "hub")], capsys)
    assert "the disk is full" in err and "The folder is as it was before" in err
    assert _snapshot(tmp_path / "hub") == before
    assert _snapshot(root / "run") == run_before  # the workdir is only read


def test_export_over_an_earlier_export_replaces_it(run: tuple[Path, Any], tmp_path: Path) -> None:
    root, _ = run
    export.main([str(root / "run"), str(tmp_path / "hub")])
    first = _snapshot(tmp_path / "hub")
    export.main([str(root / "run"), str(tmp_path / "hub")])  # the same run again: allowed, same files
    assert _snapshot(tmp_path / "hub") == first
    export.main([str(root / "run"), str(tmp_path / "timm"), "--format", "timm"])
    export.main([str(root / "run"), str(tmp_path / "timm"), "--format", "timm"])


def test_the_hub_token_never_reaches_logs_or_files(
    run: tuple[Path, Any], tmp_path: Path, capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    import local_hub
    import local_hub_push

    root, _ = run
    secret = "hf_bvReliabilityTestSecret0123456789"
    repos = tmp_path / "repos"
    caplog.set_level("DEBUG")
    with local_hub_push.serve_push_endpoint(repos, token=secret) as url, local_hub.use_endpoint(url):
        os.environ["HF_TOKEN"] = secret
        try:
            export.main([str(root / "run"), str(tmp_path / "out"), "--push", "org/secret-test", "--private"])
        finally:
            del os.environ["HF_TOKEN"]
    assert local_hub.repo_history(repos, "org/secret-test"), "nothing was pushed"
    out, err = capfd.readouterr()
    assert secret not in out + err and secret not in caplog.text
    for folder in (tmp_path / "out", root / "run", repos):
        for name, data in _snapshot(folder).items():
            assert secret.encode() not in data, f"the token is in {folder / name}"


def test_export_of_a_run_without_an_exportable_model_says_why(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import bv.uvim  # noqa: F401  (registers uvim_vtt, whose Hub class only loads a stage I into training)

    cases = {
        "stage1": ({"task": "uvim_vqvae"}, "(task 'uvim_vqvae') names no config.model_name"),
        "stage2": ({"task": "uvim", "model_name": "uvim_vtt"}, "'uvim_vtt' cannot be exported as a Hub folder"),
        "stage2_hint": ({"task": "uvim", "model_name": "uvim_vtt"}, "written by bv.uvim.save_uvim(workdir, folder)"),
    }
    for name, (config, message) in cases.items():
        workdir = tmp_path / name
        workdir.mkdir()
        (workdir / "config.json").write_text(json.dumps(config))
        err = _export_fails([str(workdir), str(tmp_path / f"{name}_out")], capsys)
        assert message in err and "vit" in err, err
        assert not (tmp_path / f"{name}_out").exists()

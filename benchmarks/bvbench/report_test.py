"""The suite's bookkeeping: spreads and ratios, the plan, RESULTS.md and the CSV, and one section run end to end."""

from __future__ import annotations

import csv
import io

import pytest

from bvbench import plan, report
from bvbench.stats import Spread, alternate, ratios


def _spread(median: float, lo: float, hi: float, runs: int = 3) -> dict:
    return {"median": median, "min": lo, "max": hi, "runs": runs}


def test_spread_and_rates_from_seconds():
    s = Spread.of([2.0, 1.0, 4.0])
    assert (s.median, s.min, s.max, s.runs) == (2.0, 1.0, 4.0, 3)
    rate = s.scaled(8.0)  # 8 images in 2 s (1 s at best, 4 s at worst)
    assert (rate.median, rate.min, rate.max) == (4.0, 2.0, 8.0)
    assert ratios([3.0, 4.0, 10.0], [1.0, 2.0, 2.0]).median == 3.0  # pairwise: 3, 2, 5
    assert s.format(1, " s") == "2.0 s (1.0-4.0, 3 runs)"
    with pytest.raises(ValueError, match="at least one"):
        Spread.of([])


def test_alternate_calls_each_function_in_turn():
    calls: list[str] = []
    times = alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3)
    assert calls == ["a", "b"] * 3 and [len(v) for v in times.values()] == [3, 3]


def test_the_plan_has_every_section_and_the_gpu_one_only_on_a_gpu():
    cpu = {j.name for j in plan.jobs(quick=True, gpu=False)}
    expected = {"trainer_overhead", "scaling_batch", "fsdp", "checkpoint", "load_pretrained", "pp", "evaluation"}
    assert expected <= cpu and "gpu" not in cpu
    assert {f"model_{k}" for k in (*plan.MODELS_224, "vit_mnist")} <= cpu
    assert "gpu" in {j.name for j in plan.jobs(quick=False, gpu=True)}
    vit_b = next(j for j in plan.jobs(quick=False, gpu=False) if j.name == "model_vit_b16")
    assert {(r["mode"], r["dtype"]) for r in vit_b.kwargs["runs"]} == {
        ("train", "float32"),
        ("infer", "float32"),
        ("train", "bfloat16"),
        ("infer", "bfloat16"),
    }


MACHINE = {
    "date": "2026-12-02 04:00 UTC",
    "host": "h",
    "cpu": "Test CPU",
    "cores": 2,
    "memory_gib": 24.0,
    "gpus": [],
    "os": "Linux",
    "python": "3.11.7",
    "versions": {"jax": "0.10.2", "torch": "2.14.1"},
    "bv": {"bv-core": "0.1.0"},
    "commit": "abc1234",
}
LOAD = {
    "wall_s": 600.0,
    "load_start": [3.0, 3.0, 3.0],
    "load_end": [2.5, 2.0, 2.0],
    "cores": 2,
    "others_cores": 1.2,
    "machine_cores": 2,
}


def _run(mode: str, bv: float, timm: float, dtype: str = "float32") -> dict:
    return {
        "key": "vit_ti16",
        "model": "ViT-Ti/16",
        "timm_model": "vit_tiny_patch16_224",
        "mode": mode,
        "dtype": dtype,
        "img_size": 224,
        "batch_size": 4,
        "param_count": 5_717_224,
        "flops_per_step": 4 * 2 * 1.3e9,
        "xla_peak_bytes": 200 * 2**20,
        "mfu": None,
        "device": "cpu (cpu)",
        "torch_threads": 2,
        "bv_img_s": _spread(bv, bv - 1, bv + 1),
        "timm_img_s": _spread(timm, timm - 1, timm + 1),
        "bv_step_ms": _spread(4000 / bv, 3900 / bv, 4100 / bv),
        "timm_step_ms": _spread(4000 / timm, 3900 / timm, 4100 / timm),
        "bv_over_timm": _spread(bv / timm, bv / timm - 0.1, bv / timm + 0.1),
    }


RESULTS = {
    "trainer_overhead": {
        "result": {
            "config": "bv.vit.configs.mnist",
            "batch_size": 128,
            "steps_per_round": 10,
            "log_every": 50,
            "image_shape": [128, 28, 28, 1],
            "bare_img_s": _spread(300.0, 290.0, 310.0),
            "trainer_img_s": _spread(297.0, 280.0, 305.0),
            "trainer_over_bare": _spread(1.01, 0.98, 1.04),
            "pipeline_img_s": _spread(250.0, 240.0, 260.0),
            "pipeline_over_bare": _spread(1.2, 1.1, 1.3),
        },
        "seconds": 60.0,
        "load": [3.0, 3.1],
    },
    "model_vit_ti16": {
        "result": [_run("train", 10.0, 8.0), _run("infer", 30.0, 40.0)],
        "seconds": 90.0,
        "load": [3.0, 3.0],
    },
    "pp": {
        "result": {
            "workers": 2,
            "jpegs": 128,
            "mean_kib": 52.0,
            "pipelines": {
                "base": {"pp": "decode|flip_lr", "per_cpu_s": _spread(500, 450, 520), "wall": _spread(600, 500, 700)}
            },
        },
        "seconds": 70.0,
        "load": [3.0, 3.0],
    },
    "checkpoint": {"error": "exit code 1: OSError: disk full", "seconds": 5.0, "load": [3.0, 3.0]},
}


def test_results_md_reports_the_gap_the_ratios_the_failures_and_the_missing_gpu():
    text = report.markdown(
        MACHINE, LOAD, RESULTS, quick=True, command="./pants run benchmarks:all -- --quick", probe={"backend": "cpu"}
    )
    assert "Test CPU, 2 cores available" in text and "jax 0.10.2, torch 2.14.1" in text and "2026-12-02" in text
    assert "The machine was shared with other jobs" in text and "other processes used 1.20 of the 2 cores" in text
    assert "is 1.0% below the bare step's (within the 5% limit)" in text  # 1 - 1/1.01
    # Training: bv 10 img/s against timm 8 (ratio 1.25); inference 30 against 40 (0.75). GMACs 1.30.
    assert (
        "| ViT-Ti/16 | vit_tiny_patch16_224 | float32 | 224 | 4 | 5.72 | 1.30 | 10.00 (9.00-11.00) | 8.00 (7.00-9.00) | 1.25 (1.15-1.35) | n/a |"
        in text
    )
    assert "| 30.00 (29.00-31.00) | 40.00 (39.00-41.00) | 0.75 (0.65-0.85) |" in text
    assert "`decode\\|flip_lr`" in text  # a pp string's | does not split the table cell
    assert "*checkpoint: this section failed (exit code 1: OSError: disk full).*" in text
    assert "**No GPU was available for this run** (JAX backend: cpu" in text
    assert f"```\n{report.GPU_COMMAND}\n```" in text  # the one command that fills the GPU section


def test_a_trainer_gap_over_five_percent_is_flagged():
    slow = {**RESULTS["trainer_overhead"]["result"], "trainer_over_bare": _spread(1.10, 1.08, 1.12)}
    text = report.markdown(
        MACHINE,
        LOAD,
        {"trainer_overhead": {"result": slow, "seconds": 1.0, "load": [0, 0]}},
        quick=False,
        command="c",
        probe={},
    )
    assert "is 9.1% below the bare step's (**outside** the 5% limit)" in text


def test_csv_follows_timms_columns_with_a_commented_header():
    text = report.csv_text(MACHINE, RESULTS)
    assert text.startswith("# bv benchmark suite, 2026-12-02 04:00 UTC; Test CPU, 2 cores; GPUs: none\n# jax 0.10.2")
    rows = list(csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#")))
    assert [(r["framework"], r["mode"]) for r in rows] == [
        ("bv", "train"),
        ("timm", "train"),
        ("bv", "infer"),
        ("timm", "infer"),
    ]
    timm_train = rows[1]
    assert timm_train["model"] == "vit_tiny_patch16_224" and timm_train["samples_per_sec"] == "8.00"
    assert timm_train["param_count"] == "5.72" and timm_train["gmacs"] == "1.30" and timm_train["img_size"] == "224"
    assert list(rows[0]) == list(report.CSV_COLUMNS)


def test_a_section_runs_in_its_own_process_with_simulated_devices(tmp_path):
    import all as suite  # benchmarks/all.py

    job = plan.Job(
        "fsdp",
        "fsdp",
        dict(runs=[dict(variant="Ti/16", device_counts=[1, 8], min_size_mb=0)]),
        "FSDP",
        simulated_devices=8,
    )
    entry = suite.run_job(job, str(tmp_path))
    assert "result" in entry, entry
    (run,) = entry["result"]
    one, eight = run["rows"]
    assert one["replicate_max_bytes"] == one["fsdp_max_bytes"] == run["state_bytes"]  # one device holds it all
    assert eight["replicate_max_bytes"] == run["state_bytes"] > 2 * eight["fsdp_max_bytes"]


def test_a_failing_section_reports_its_error_instead_of_a_result(tmp_path):
    import all as suite

    # A section called with an option it does not have fails in its process (before it imports JAX).
    entry = suite.run_job(plan.Job("bad", "fsdp", dict(runs=[dict(no_such_option=1)]), "bad"), str(tmp_path))
    assert "result" not in entry
    assert entry["error"].startswith("exit code 1: TypeError: per_device_memory() got an unexpected keyword argument")
    assert (tmp_path / "bad.log").read_text().count("Traceback") == 1

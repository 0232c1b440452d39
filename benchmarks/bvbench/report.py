"""Turns the suite's results into ``RESULTS.md`` and a CSV in timm's benchmark column style."""

from __future__ import annotations

import csv
import io
from typing import Any, Iterable, Mapping, Sequence

from bvbench.machine import shared
from bvbench.published import TIMM_PUBLISHED

GAP_LIMIT = 0.05  # the trainer step may be at most 5% slower than the bare jitted step

CSV_COLUMNS = (
    "model",
    "framework",
    "mode",
    "dtype",
    "img_size",
    "batch_size",
    "samples_per_sec",
    "samples_per_sec_min",
    "samples_per_sec_max",
    "step_time_ms",
    "param_count",
    "gmacs",
    "mfu",
    "runs",
    "device",
)


def spread(s: Mapping[str, Any] | None, digits: int = 1) -> str:
    """``{"median", "min", "max", "runs"}`` as ``12.3 (11.9-12.8)``."""
    if not s:
        return "n/a"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines + [""]


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def model_runs(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every bv/timm comparison of the run (the ``model_*`` sections), in plan order."""
    out: list[dict[str, Any]] = []
    for name, r in results.items():
        if name.startswith("model_") and isinstance(r.get("result"), list):
            out += r["result"]
    return out


def gmacs_by_model(runs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Forward GMACs per image from bv's fp32 inference step (XLA's FLOP count / 2 / batch)."""
    out = {}
    for r in runs:
        if r["mode"] == "infer" and r["dtype"] == "float32" and r.get("flops_per_step"):
            out[r["key"]] = r["flops_per_step"] / 2 / r["batch_size"] / 1e9
    return out


def csv_text(machine: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    """One row per framework, model, mode and dtype; a commented header names the machine, versions and date."""
    runs = model_runs(results)
    gmacs = gmacs_by_model(runs)
    buf = io.StringIO()
    versions = ", ".join(f"{k} {v}" for k, v in {**machine["versions"], **machine["bv"]}.items())
    buf.write(f"# bv benchmark suite, {machine['date']}; {machine['cpu']}, {machine['cores']} cores")
    buf.write(f"; GPUs: {', '.join(machine['gpus']) or 'none'}\n# {versions}\n")
    writer = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in runs:
        for framework in ("bv", "timm"):
            rate = r.get(f"{framework}_img_s")
            if not rate:
                continue
            mfu = r.get("mfu") if framework == "bv" else None
            writer.writerow(
                {
                    "model": r["timm_model"] if framework == "timm" and r["timm_model"] != "vit" else r["model"],
                    "framework": framework,
                    "mode": r["mode"],
                    "dtype": r["dtype"],
                    "img_size": r["img_size"],
                    "batch_size": r["batch_size"],
                    "samples_per_sec": f"{rate['median']:.2f}",
                    "samples_per_sec_min": f"{rate['min']:.2f}",
                    "samples_per_sec_max": f"{rate['max']:.2f}",
                    "step_time_ms": f"{r[f'{framework}_step_ms']['median']:.2f}",
                    "param_count": f"{r['param_count'] / 1e6:.2f}",
                    "gmacs": f"{gmacs[r['key']]:.2f}" if r["key"] in gmacs else "",
                    "mfu": f"{mfu:.4f}" if mfu is not None else "",
                    "runs": rate["runs"],
                    "device": r["device"] if framework == "bv" else ("cuda" if "gpu" in r["device"] else "cpu"),
                }
            )
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ markdown


def _header(machine: Mapping[str, Any], load: Mapping[str, Any], quick: bool, command: str) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    bv = ", ".join(f"{k} {v}" for k, v in machine["bv"].items())
    others = load.get("others_cores")
    busy = (
        f"other processes used {others:.2f} of the {load['machine_cores']} cores on average"
        if others is not None
        else "other processes' CPU use unknown"
    )
    lines = [
        "# bv benchmark results",
        "",
        f"Written by `{command}`{' (quick sizes)' if quick else ''} on {machine['date']}, commit {machine['commit'] or 'unknown'}.",
        "Every figure is the median of several runs, with the min and max in brackets; the runs of things",
        "compared (bv and timm, trainer and bare step) alternate, so that a change of load hits both alike,",
        "and each ratio is the median of the per-round ratios.",
        "",
        "| | |",
        "|---|---|",
        f"| machine | {machine['cpu']}, {machine['cores']} cores available, {machine['memory_gib']:.0f} GiB, {machine['os']} |",
        f"| GPUs | {', '.join(machine['gpus']) or 'none'} |",
        f"| versions | Python {machine['python']}, {versions} |",
        f"| bv | {bv} |",
        f"| run time | {load['wall_s'] / 60:.1f} min |",
        f"| load | load average {load['load_start'][0]:.1f} at the start, {load['load_end'][0]:.1f} at the end; {busy} |",
        "",
    ]
    if shared(load):
        lines += [
            "**The machine was shared with other jobs during this run**: absolute figures are lower and noisier",
            "than on a quiet machine. Compare the ratios, measured in alternation within one process.",
            "",
        ]
    return lines


def _failed(name: str, entry: Mapping[str, Any]) -> list[str]:
    return [f"*{name}: this section failed ({entry.get('error', 'no result')}).*", ""]


def _trainer(entry: Mapping[str, Any]) -> list[str]:
    r = entry["result"]
    ratio = r["trainer_over_bare"]["median"]
    gap = 1 - 1 / ratio
    lines = [
        "## 1. Trainer step against the bare jitted step",
        "",
        f"The README's default model (`{r['config']}`, batch {r['batch_size']}, images {r['image_shape'][1:]}): the",
        "step the trainer compiles, called in a bare Python loop on batches already on the device, against",
        "`TrainLoop.run` (the trainer's loop: host batches to the device, NaN checks, logging every",
        f"{r['log_every']} steps) over the same batches; {r['steps_per_round']} steps per run, alternated.",
        "",
    ]
    rows = [
        ("bare jitted step", spread(r["bare_img_s"])),
        ("trainer step (`TrainLoop`)", spread(r["trainer_img_s"])),
    ]
    if "pipeline_img_s" in r:
        rows.append(("trainer + real input pipeline (tf.data on the same cores)", spread(r["pipeline_img_s"])))
    lines += _table(("", "img/s"), rows)
    verdict = "within" if gap < GAP_LIMIT else "**outside**"
    where = f"{100 * gap:.1f}% below" if gap >= 0 else f"{-100 * gap:.1f}% above (noise)"
    lines += [
        f"Trainer time / bare time: {spread(r['trainer_over_bare'], 3)}: the trainer's throughput is "
        f"{where} the bare step's ({verdict} the 5% limit).",
        "",
    ]
    if "pipeline_over_bare" in r:
        pr = r["pipeline_over_bare"]["median"]
        lines += [
            f"With the real input pipeline, time / bare time is {spread(r['pipeline_over_bare'], 3)} "
            f"({100 * (1 - 1 / pr):.0f}% of the throughput goes to tf.data sharing the CPU).",
            "",
        ]
    return lines


def _compare_table(runs: Sequence[Mapping[str, Any]], mode: str, gmacs: Mapping[str, float]) -> list[str]:
    rows = []
    for r in runs:
        if r["mode"] != mode:
            continue
        ratio = r.get("bv_over_timm")
        rows.append(
            (
                r["model"],
                r["timm_model"] if r["timm_model"] != "vit" else "VisionTransformer(same sizes)",
                r["dtype"],
                r["img_size"],
                r["batch_size"],
                f"{r['param_count'] / 1e6:.2f}",
                f"{gmacs[r['key']]:.2f}" if r["key"] in gmacs else "",
                spread(r["bv_img_s"], 2),
                spread(r.get("timm_img_s"), 2),
                spread(ratio, 2) if ratio else "n/a",
                f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a",
            )
        )
    header = (
        "model",
        "timm",
        "matmuls",
        "px",
        "batch",
        "params (M)",
        "GMACs",
        "bv img/s",
        "timm img/s",
        "bv / timm",
        "MFU",
    )
    return _table(header, rows)


def _models(results: Mapping[str, Any]) -> list[str]:
    runs = model_runs(results)
    if not runs and not any(name.startswith("model_") for name in results):
        return []
    gmacs = gmacs_by_model(runs)
    threads = {int(r["torch_threads"]) for r in runs if r.get("torch_threads")}
    lines = [
        "## 2. bv against timm, training step",
        "",
        "The same architecture and batch in the same process, alternated: bv's trainer step (forward,",
        "backward, clipping, Adam) against timm's usual PyTorch step (zero_grad, forward, cross-entropy,",
        "backward, clipping, AdamW). `bv / timm` above 1 means bv is faster. GMACs: forward, per image, from",
        f"XLA's FLOP count. PyTorch ran with {', '.join(map(str, sorted(threads))) or '?'} threads and",
        "`OMP_WAIT_POLICY=PASSIVE` (with spinning OpenMP threads it was up to 25x slower on a shared machine).",
        "MFU needs a known peak FLOP/s (GPUs, TPUs); a CPU has none here.",
        "",
    ]
    lines += _compare_table(runs, "train", gmacs)
    lines += [
        "## 3. bv against timm, inference",
        "",
        "bv's jitted `apply(train=False)` against timm's `eval()` model under `torch.inference_mode()`.",
        "",
    ]
    lines += _compare_table(runs, "infer", gmacs)
    failed = [name for name, e in results.items() if name.startswith("model_") and "result" not in e]
    for name in failed:
        lines += _failed(name, results[name])
    return lines


def _scaling(results: Mapping[str, Any]) -> list[str]:
    lines = ["## 4. How cost grows", ""]
    entry = results.get("scaling_batch")
    if entry and "result" in entry:
        lines += [
            "Training step of ViT-Ti/16 at 224 px (fp32) against the batch size; memory is XLA's peak for one",
            "step (arguments + outputs + temporaries - donated), from the compiled step's memory analysis.",
            "",
        ]
        rows: list[tuple[Any, ...]] = [
            (r["batch_size"], spread(r["step_ms"]), spread(r["img_s"], 2), f"{r['xla_peak_bytes'] / 2**20:.0f} MiB")
            for r in entry["result"]
        ]
        lines += _table(("batch", "step ms", "img/s", "peak memory"), rows)
    elif entry:
        lines += _failed("scaling_batch", entry)
    train = [
        r
        for r in model_runs(results)
        if r["mode"] == "train" and r["dtype"] == "float32" and r["key"].startswith("vit_") and r["img_size"] == 224
    ]
    if train:
        lines += ["ViT training step against the model size (fp32, 224 px, the same batch):", ""]
        rows = [
            (
                r["model"],
                r["batch_size"],
                f"{r['param_count'] / 1e6:.1f}",
                spread(r["bv_step_ms"]),
                f"{r['xla_peak_bytes'] / 2**20:.0f} MiB",
                f"{r['flops_per_step'] / 1e9:.0f}",
            )
            for r in train
        ]
        lines += _table(("model", "batch", "params (M)", "step ms", "peak memory", "GFLOP/step"), rows)
    entry = results.get("fsdp")
    if entry and "result" in entry:
        lines += [
            "Per-device memory of the params and Adam state against the device count (layouts from",
            "`bv.core.sharding` over simulated devices; computed from shapes, nothing allocated; see",
            "`benchmarks/fsdp_memory.py` for the ZeRO-1 layout and thresholds):",
            "",
        ]
        rows = []
        for run in entry["result"]:
            name = f"ViT-{run['variant']}{' (scan)' if run['scan'] else ''}"
            for row in run["rows"]:
                n = row["devices"]
                rows.append(
                    (
                        name,
                        n,
                        _gb(row["replicate_max_bytes"]),
                        _gb(row["fsdp_max_bytes"]),
                        f"{row['fsdp_max_bytes'] / (run['state_bytes'] / n):.2f}",
                    )
                )
        lines += _table(("model", "devices", "replicated", run["strategy"], "FSDP / perfect split"), rows)
    elif entry:
        lines += _failed("fsdp", entry)
    return lines


def _load_pretrained(r: Mapping[str, Any]) -> list[str]:
    return [
        f"`ViT.from_pretrained(folder)` against timm's `create_model('local-dir:...', pretrained=True)`, ViT-{r['variant']}",
        f"({r['size_mb']:.0f} MiB of fp32 weights, same weights, page cache warm); the logits agree to {r['max_logits_diff']:.1e}.",
        "",
    ] + _table(
        ("bv s", "timm s", "bv / timm time"),
        [(spread(r["bv_s"], 3), spread(r["timm_s"], 3), spread(r["bv_over_timm"], 2))],
    )


def _checkpoint(r: Mapping[str, Any]) -> list[str]:
    return [
        f"Training checkpoints (Orbax), ViT-{r['variant']} + Adam ({_gb(r['state_bytes'])}), FSDP over {r['devices']} simulated",
        "devices, zstd off (`benchmarks/checkpoint_io.py` has the async-vs-sync step times and memory):",
        "",
    ] + _table(
        ("sync save GB/s", "async save blocks (s)", "restore GB/s"),
        [(spread(r["save_gb_s"], 2), spread(r["async_blocks_s"], 2), spread(r["restore_gb_s"], 2))],
    )


def _pp(r: Mapping[str, Any]) -> list[str]:
    rows = [(f"`{p['pp']}`", spread(p["per_cpu_s"], 0), spread(p["wall"], 0)) for p in r["pipelines"].values()]
    return [
        f"Input pipeline, ImageNet pp strings on {r['jpegs']} real JPEGs (mean {r['mean_kib']:.0f} KiB), {r['workers']} tf.data",
        "workers; per CPU-second is the rate per fully available core, which holds on a shared machine:",
        "",
    ] + _table(("pp", "img per CPU-second", "img/s (wall)"), rows)


def _evaluation(r: Mapping[str, Any]) -> list[str]:
    return [
        f"Evaluation: the classification evaluator over {r['data']} ({r['examples']} images, batch {r['batch_size']}, the",
        "MNIST config's eval pp), everything included, against the bare jitted forward pass on device batches:",
        "",
    ] + _table(
        ("evaluator img/s", "bare forward img/s"), [(spread(r["evaluator_img_s"], 0), spread(r["bare_img_s"], 0))]
    )


# Section 5's parts: (job name, what draws its result).
_IO_PARTS = (
    ("load_pretrained", _load_pretrained),
    ("checkpoint", _checkpoint),
    ("pp", _pp),
    ("evaluation", _evaluation),
)


def _io(results: Mapping[str, Any]) -> list[str]:
    lines = ["## 5. Loading, checkpoints, input pipeline, evaluation", ""]
    for name, draw in _IO_PARTS:
        entry = results.get(name)
        if entry and "result" in entry:
            lines += draw(entry["result"])
        elif entry:
            lines += _failed(name, entry)
    return lines


# The suite on a GPU machine (the Pants lock holds JAX for CPU only, so this runs from a Python environment).
GPU_COMMAND = (
    "PYTHONPATH=benchmarks:core:preprocessing:evaluators:models/vit:models/mixer:models/bit python benchmarks/all.py"
)


def _gpu(results: Mapping[str, Any], machine: Mapping[str, Any], probe: Mapping[str, Any]) -> list[str]:
    lines = ["## 6. GPU", ""]
    entry = results.get("gpu")
    if entry is None:
        seen = ", ".join(machine["gpus"]) or "no NVIDIA GPU (nvidia-smi found none)"
        lines += [
            f"**No GPU was available for this run** (JAX backend: {probe.get('backend', 'unknown')}; {seen}), so this",
            "section is empty. On a machine with a GPU the same suite adds it: ViT-B/16 with bf16 matmuls,",
            "training and inference img/s for bv and timm on that GPU, MFU against the device's peak, and",
            "timm's published figure for the same model on that device where one exists. To run it there, in a",
            "Python 3.11 environment with the project's requirements (`3rdparty/python/requirements.txt` and",
            "`dev-requirements.txt`; torch 2.14.1 is a CUDA build) and JAX's CUDA plugin",
            "(`pip install 'jax[cuda12]==0.10.2'`), from the repository root, one command:",
            "",
            "```",
            GPU_COMMAND,
            "```",
            "",
            "timm publishes ViT-B/16 (`vit_base_patch16_224`) figures for these devices (none for H100/H200 or A100):",
            "",
        ]
        rows = [
            (p["device"], p["mode"], p["precision"], p["batch_size"], p["img_s"], f"`{p['source']}`")
            for p in TIMM_PUBLISHED
        ]
        return lines + _table(("device", "mode", "precision", "batch", "img/s", "source"), rows)
    if "result" not in entry:
        return lines + _failed("gpu", entry)
    r = entry["result"]
    peak = r["peak_bf16_flops"]
    lines += [
        (
            f"{r['device']} x{r['device_count']}; peak dense bf16 {peak / 1e12:.0f} TFLOP/s."
            if peak
            else f"{r['device']}: peak FLOP/s unknown, no MFU."
        ),
        "",
    ]
    lines += _compare_table(r["runs"], "train", {}) + _compare_table(r["runs"], "infer", {})
    if r["published"]:
        rows = [
            (p["device"], p["mode"], p["precision"], p["batch_size"], p["img_s"], f"`{p['source']}`")
            for p in r["published"]
        ]
        lines += ["timm's published figures for ViT-B/16 on this device:", ""]
        lines += _table(("device", "mode", "precision", "batch", "img/s", "source"), rows)
    else:
        lines += [
            f"timm publishes no ViT-B/16 figure for {r['device']}; the timm column above is timm measured here.",
            "",
        ]
    return lines


def markdown(
    machine: Mapping[str, Any],
    load: Mapping[str, Any],
    results: Mapping[str, Any],
    *,
    quick: bool,
    command: str,
    probe: Mapping[str, Any],
) -> str:
    lines = _header(machine, load, quick, command)
    entry = results.get("trainer_overhead")
    if entry is not None:
        lines += (
            _trainer(entry)
            if "result" in entry
            else ["## 1. Trainer step against the bare jitted step", ""] + _failed("trainer_overhead", entry)
        )
    lines += _models(results) + _scaling(results) + _io(results) + _gpu(results, machine, probe)
    lines += ["## Per-section time and load", ""]
    rows = [
        (
            name,
            f"{e['seconds']:.0f} s",
            f"{e['load'][0]:.1f} -> {e['load'][1]:.1f}",
            "ok" if "result" in e else "failed",
        )
        for name, e in results.items()
    ]
    lines += _table(("section", "time", "load average", ""), rows)
    lines += ["The raw figures of this run are in `results.json`; the CSV (`results.csv`) follows timm's columns.", ""]
    return "\n".join(lines)

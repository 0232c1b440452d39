"""bv's benchmark suite, one command: writes benchmarks/RESULTS.md, results.csv and results.json.

    ./pants run benchmarks:all -- [--quick] [--only trainer_overhead,model_vit_b16] [--out DIR]

Sections (each in its own process, see ``bvbench/plan.py`` for their sizes):

* the trainer's step against the bare jitted step of the same model (the README's MNIST ViT);
* bv against timm (PyTorch) on the same architecture and batch, in the same process: training step
  and inference img/s for ViT-Ti/S/B-16, Mixer-B/16 and BiT-R50x1 at 224 px and the MNIST ViT at
  28 px, fp32 and bf16 matmuls (ViTs), with parameter counts, GMACs and MFU where a peak is known;
* how step time and memory grow with the batch and the model size; per-device memory of FSDP
  against the device count;
* ``from_pretrained`` against timm's ``create_model(pretrained=True)`` from a local folder;
  checkpoint save/restore GB/s; input pipeline img/s of the ImageNet pp strings; eval throughput;
* on a machine with a GPU (JAX sees one), ViT-B/16 with bf16 matmuls, bv and timm on that GPU,
  MFU, and timm's published figure for that device.

``--quick`` keeps a run on a 2-core CPU to about a quarter of an hour (smaller batches, fewer
runs). The machine, versions, date, load and the share of the CPU other processes used go into
the header; on a shared machine compare the ratios, which are measured in alternation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from bvbench import machine as machine_lib
from bvbench import report
from bvbench.plan import DEVICES_XLA_FLAG, Job, jobs
from bvbench.sections import RESULT_MARK

PROBE = (
    "import json, jax\n"
    "d = jax.devices()[0]\n"
    "print(json.dumps({'backend': jax.default_backend(), 'device_kind': d.device_kind, 'count': jax.device_count()}))\n"
)


def default_out() -> str:
    """``benchmarks/`` when run from the repository root (as ``./pants run`` does), else the current folder."""
    return "benchmarks" if os.path.isfile(os.path.join("benchmarks", "BUILD")) else "."


def child_env(job: Job | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # The children import what this process can: its sys.path (a PEX's or a virtualenv's).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # PyTorch's OpenMP threads otherwise spin while waiting; on a shared machine that made timm up to 25x slower.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if job is not None and job.simulated_devices:
        env["JAX_PLATFORMS"] = "cpu"  # the same simulated-device layout on any machine
        flags = env.get("XLA_FLAGS", "")
        if DEVICES_XLA_FLAG not in flags:
            env["XLA_FLAGS"] = f"{flags} {DEVICES_XLA_FLAG}={job.simulated_devices}".strip()
    return env


def probe() -> dict[str, Any]:
    """What JAX runs on here, asked in a child process (this one never imports JAX)."""
    out = subprocess.run([sys.executable, "-c", PROBE], env=child_env(), capture_output=True, text=True, timeout=300)
    if out.returncode:
        return {"backend": "unknown", "error": out.stderr.strip().splitlines()[-1:] or ["?"]}
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_job(job: Job, log_dir: str) -> dict[str, Any]:
    """Runs one section in a fresh process; its result, or the error that stopped it, with time and load."""
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    log_path = os.path.join(log_dir, f"{job.name}.log")
    command = [sys.executable, "-m", "bvbench.sections", job.section, json.dumps(job.kwargs)]
    entry: dict[str, Any] = {}
    with open(log_path, "w") as log:
        try:
            out = subprocess.run(
                command, env=child_env(job), stdout=subprocess.PIPE, stderr=log, text=True, timeout=job.timeout_s
            )
            lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT_MARK)]
            if out.returncode == 0 and lines:
                entry["result"] = json.loads(lines[-1][len(RESULT_MARK) :])
            else:
                entry["error"] = f"exit code {out.returncode}"
        except subprocess.TimeoutExpired:
            entry["error"] = f"timed out after {job.timeout_s} s"
    if "error" in entry:
        with open(log_path) as f:
            tail = [line.rstrip() for line in f.readlines()[-40:]]
        last = next((line for line in reversed(tail) if line.strip()), "")
        entry["error"] += f": {last[:300]}"
        print("\n".join(tail[-15:]), file=sys.stderr)
    entry["seconds"] = time.monotonic() - start
    entry["load"] = [load_before, os.getloadavg()[0]]
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: about 15 minutes on a 2-core CPU")
    parser.add_argument("--only", default=None, help="comma-separated job names (see bvbench/plan.py)")
    parser.add_argument("--out", default=None, help="where RESULTS.md, results.csv and results.json go")
    args = parser.parse_args(argv)
    out_dir = args.out or default_out()
    os.makedirs(out_dir, exist_ok=True)

    meter = machine_lib.LoadMeter()
    info = machine_lib.describe()
    where = probe()
    gpu = where.get("backend") == "gpu"
    plan = jobs(args.quick, gpu)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {j.name for j in plan}
        if unknown:
            parser.error(f"unknown job(s) {sorted(unknown)}; the jobs are: {', '.join(j.name for j in plan)}")
        plan = [j for j in plan if j.name in wanted]
    print(
        f"bv benchmarks on {info['cpu']} ({info['cores']} cores), JAX backend {where.get('backend')}"
        f"{' (' + where.get('device_kind', '') + ')' if gpu else ''}; {len(plan)} sections"
        f"{', quick' if args.quick else ''}; load average {os.getloadavg()[0]:.1f}; "
        f"writing to {os.path.abspath(out_dir)}",
        flush=True,
    )
    command = (
        "./pants run benchmarks:all --"
        + (" --quick" if args.quick else "")
        + (f" --only {args.only}" if args.only else "")
    )

    def write() -> dict[str, Any]:
        """Writes the report of the sections run so far (after each one: a stopped run still leaves one)."""
        load = meter.read()
        text = report.markdown(info, load, results, quick=args.quick, command=command, probe=where)
        with open(os.path.join(out_dir, "RESULTS.md"), "w") as f:
            f.write(text)
        with open(os.path.join(out_dir, "results.csv"), "w") as f:
            f.write(report.csv_text(info, results))
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(
                {"machine": info, "load": load, "probe": where, "quick": args.quick, "results": results}, f, indent=1
            )
        return load

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bv-bench-logs-") as log_dir:
        for i, job in enumerate(plan, 1):
            print(f"[{i}/{len(plan)}] {job.title} ...", end=" ", flush=True)
            results[job.name] = entry = run_job(job, log_dir)
            status = "ok" if "result" in entry else f"FAILED ({entry['error']})"
            print(f"{entry['seconds']:.0f} s, load {entry['load'][1]:.1f}: {status}", flush=True)
            write()
    load = write()
    failed = [name for name, e in results.items() if "result" not in e]
    print(
        f"Wrote {out_dir}/RESULTS.md, results.csv, results.json in {load['wall_s'] / 60:.1f} min"
        + (f"; FAILED: {failed}" if failed else ".")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
